use super::*;

fn opts() -> Options {
    Options::new("img:1")
}

fn deployment(container: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: m
  namespace: ns
spec:
  selector:
    matchLabels: {{app: m}}
  template:
    metadata:
      labels: {{app: m}}
    spec:
{spec_extra}      containers:
{container}      volumes:
        - name: models
          emptyDir: {{}}
"
    )
}

const VLLM: &str = "        - name: vllm
          image: vllm/vllm-openai:latest
          args: [\"--model=/models/x\", \"--host=0.0.0.0\"]
          volumeMounts:
            - {name: models, mountPath: /models}
";

fn refused(input: &str, o: &Options) -> String {
    match inject(input, o) {
        Err(e @ InjectError::Refused { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn first_doc(yaml: &str) -> Value {
    let doc = serde_norway::Deserializer::from_str(yaml).next().unwrap();
    Value::deserialize(doc).unwrap()
}

fn containers(v: &Value) -> &Vec<Value> {
    v["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
}

#[test]
fn a_vllm_deployment_gets_the_sidecar_and_a_loopback_host() {
    let out = inject(&deployment(VLLM, ""), &opts()).unwrap();
    let v = first_doc(&out.yaml);
    let c = containers(&v);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0]["args"][1], Value::from("--host=127.0.0.1"));
    assert_eq!(c[1]["name"], Value::from(CONTAINER));
    let mounts = c[1]["volumeMounts"].as_sequence().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["name"] == "models" && m["mountPath"] == "/models" && m["readOnly"] == true));
    assert!(out.yaml.contains("kind: NetworkPolicy"));
    assert!(out.yaml.contains("path = \"/models/x\""));
    assert!(
        out.yaml.contains("model = \"/models/x\""),
        "the model path names it"
    );
    assert!(out
        .yaml
        .contains("identity = \"spiffe://cluster.local/ns/ns/sa/default\""));
}

#[test]
fn a_missing_host_flag_is_added_and_the_space_form_is_rewritten() {
    let no_flag = VLLM.replace(", \"--host=0.0.0.0\"", "");
    let v = first_doc(&inject(&deployment(&no_flag, ""), &opts()).unwrap().yaml);
    assert_eq!(
        containers(&v)[0]["args"][1],
        Value::from("--host=127.0.0.1")
    );

    let tgi = "        - name: tgi
          image: ghcr.io/huggingface/text-generation-inference:3
          command: [text-generation-launcher, --hostname, '::', --model-id, /models/x]
          volumeMounts:
            - {name: models, mountPath: /models}
";
    let mut o = opts();
    o.model = Some("x".into());
    let out = inject(&deployment(tgi, ""), &o).unwrap();
    let v = first_doc(&out.yaml);
    assert_eq!(containers(&v)[0]["command"][2], Value::from("127.0.0.1"));
    assert!(
        out.yaml.contains("address = \"127.0.0.1:80\""),
        "TGI's default port"
    );
}

#[test]
fn a_server_started_through_a_shell_is_not_rewritten_but_noted() {
    let shell = "        - name: vllm
          image: vllm/vllm-openai:latest
          command: [sh, -c, 'vllm serve /models/x --host 0.0.0.0']
          volumeMounts:
            - {name: models, mountPath: /models}
";
    let mut o = opts();
    o.model_path = Some("/models/x".into());
    o.model = Some("x".into());
    let out = inject(&deployment(shell, ""), &o).unwrap();
    assert!(out.yaml.contains("vllm serve /models/x --host 0.0.0.0"));
    assert!(
        out.notes.iter().any(|n| n.contains("NOT rebound")),
        "{:?}",
        out.notes
    );
}

#[test]
fn refusals_say_why() {
    assert!(
        refused(&deployment(VLLM, "      hostNetwork: true\n"), &opts()).contains("hostNetwork")
    );
    let no_mount = VLLM.replace(
        "          volumeMounts:\n            - {name: models, mountPath: /models}\n",
        "",
    );
    assert!(refused(&deployment(&no_mount, ""), &opts()).contains("model volume not found"));
    let two = format!(
        "{VLLM}        - name: helper\n          image: busybox\n        - name: other\n          image: vllm/vllm-openai:latest\n"
    );
    assert!(refused(&deployment(&two, ""), &opts()).contains("pass --container"));
    let unknown = "        - name: app\n          image: example/app\n";
    assert!(refused(&deployment(unknown, ""), &opts()).contains("--model-port"));
    let mut o = opts();
    o.proxy_port = Some(8000);
    assert!(refused(&deployment(VLLM, ""), &o).contains("port 8000 is already used"));
    assert!(matches!(
        inject("kind: Service\nmetadata: {name: s}\n", &opts()),
        Err(InjectError::NoWorkload)
    ));
    assert!(matches!(
        inject("a: [", &opts()),
        Err(InjectError::Parse(_))
    ));
}

#[test]
fn a_second_run_changes_nothing() {
    let input = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: m, namespace: ns}}\nspec:\n  selector: {{app: m}}\n  ports: [{{port: 80, targetPort: 8000}}]\n",
        deployment(VLLM, "")
    );
    let once = inject(&input, &opts()).unwrap();
    assert!(once.yaml.contains("targetPort: provgate"));
    let twice = inject(&once.yaml, &opts()).unwrap();
    assert_eq!(once.yaml, twice.yaml);
    assert!(twice.notes.iter().any(|n| n.contains("already injected")));
}

#[test]
fn registry_option_parses() {
    assert_eq!("configmap".parse(), Ok(Registry::ConfigMap));
    assert_eq!(
        "mlflow=https://m:5000".parse(),
        Ok(Registry::Mlflow("https://m:5000".into()))
    );
    // Registries are read over HTTPS only.
    let e = "mlflow=http://m:5000".parse::<Registry>().unwrap_err();
    assert!(e.contains("must be https://"), "{e}");
    assert_eq!(
        "http=https://r".parse(),
        Ok(Registry::Http("https://r".into()))
    );
    assert!("mlflow".parse::<Registry>().is_err());
    assert!("s3=x".parse::<Registry>().is_err());
}

#[test]
fn the_generated_config_is_a_provgate_config() {
    for registry in [
        Registry::ConfigMap,
        Registry::Mlflow("http://mlflow:5000".into()),
        Registry::Http("https://approvals.example.org".into()),
    ] {
        let text = config_toml(&ConfigText {
            object: "Deployment/m",
            proxy_port: 8080,
            admin_port: 9090,
            model_port: 8000,
            probe: Some("openai"),
            identity: "spiffe://cluster.local/ns/ns/sa/default",
            model: "a \"quoted\" name",
            model_path: "/models/x",
            registry: &registry,
            issuer: "https://kubernetes.default.svc.cluster.local",
        });
        if let Err(e) = crate::config::FileConfig::parse(&text) {
            panic!("{registry:?}: {:?}\n{text}", e.0);
        }
    }
}

#[test]
fn yaml_1_1_octal_file_modes_stay_numbers() {
    let input = deployment(VLLM, "").replace(
        "        - name: models\n          emptyDir: {}\n",
        "        - name: models\n          emptyDir: {}\n        - name: cfg\n          configMap: {name: c, defaultMode: 0644, items: [{key: k, path: p, mode: 0400}]}\n        - name: env\n          configMap: {name: \"0644\"}\n",
    );
    let out = inject(&input, &opts()).unwrap();
    let v = first_doc(&out.yaml);
    let cfg = &v["spec"]["template"]["spec"]["volumes"][1]["configMap"];
    assert_eq!(cfg["defaultMode"], 420);
    assert_eq!(cfg["items"][0]["mode"], 256);
    // Not a mode: a string stays a string.
    assert_eq!(
        v["spec"]["template"]["spec"]["volumes"][2]["configMap"]["name"],
        "0644"
    );
}
