//! `provgate inject`: adds the provgate sidecar to Kubernetes YAML, in the manner of
//! `linkerd inject`. Owns reading manifests (several documents, `List`s), finding the model
//! server in a Deployment, StatefulSet or Pod, and writing back the sidecar container, its
//! volumes, a generated `provgate.toml` ConfigMap, the Service's target port and a
//! NetworkPolicy. It refuses, with the reason, what it cannot inject safely. It is a pure
//! text-to-text function: it must not touch the file system, the network or the running
//! sidecar's modules (the config it writes is text; a unit test parses it with `config`).
//!
//! Model servers whose bind address it moves to loopback: vLLM (`--host`), Hugging Face TGI
//! (`--hostname`), Ollama (`OLLAMA_HOST`) and Triton (`--http-address`). KServe's Python model
//! server has no bind-address flag and an unrecognised server is left as it is; for those the
//! NetworkPolicy (which admits only provgate's two ports) is what keeps callers off the model
//! port, and a note says so.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_norway::{Mapping, Value};

#[cfg(test)]
mod tests;

/// The sidecar container's name; a pod that has it is already injected.
pub const CONTAINER: &str = "provgate";
/// The annotation written on injected pods (value: provgate's version).
pub const ANNOTATION: &str = "provgate/injected";
/// Named container ports; the Service targets the first, the PodMonitor scrapes the second.
pub const PROXY_PORT_NAME: &str = "provgate";
pub const ADMIN_PORT_NAME: &str = "provgate-admin";
/// Volumes added to the pod.
const CONFIG_VOLUME: &str = "provgate-config";
const APPROVALS_VOLUME: &str = "provgate-approvals";
const KEYS_VOLUME: &str = "provgate-keys";
const AUDIT_VOLUME: &str = "provgate-audit";
/// ConfigMaps the user provides (the generated config map is named after the workload).
pub const APPROVALS_CONFIGMAP: &str = "provgate-approvals";
pub const KEYS_CONFIGMAP: &str = "provgate-keys";
const CONFIG_DIR: &str = "/etc/provgate/config";
const APPROVALS_DIR: &str = "/etc/provgate/approvals";
const KEYS_DIR: &str = "/etc/provgate/keys";
const AUDIT_DIR: &str = "/var/lib/provgate/audit";

/// What the command line chose.
#[derive(Clone, Debug)]
pub struct Options {
    /// The provgate container image.
    pub image: String,
    /// `[artefact] model`; default: from the server's flags (vLLM `--served-model-name`,
    /// KServe `--model_name`).
    pub model: Option<String>,
    /// The model directory inside the model server container; default: from its flags.
    pub model_path: Option<String>,
    /// The model server's HTTP port; default: from its flags, env or the server's default.
    pub model_port: Option<u16>,
    /// The model server container; default: the only container, or the one recognised one.
    pub container: Option<String>,
    /// `[workload] identity`; default `spiffe://cluster.local/ns/NS/sa/SERVICE_ACCOUNT`.
    pub workload_identity: Option<String>,
    pub registry: Registry,
    /// provgate's listener; default: 8080, or the next port no container uses.
    pub proxy_port: Option<u16>,
    /// provgate's admin listener; default: 9090, or the next free one.
    pub admin_port: Option<u16>,
    /// The namespace allowed to scrape the admin port (NetworkPolicy).
    pub monitoring_namespace: String,
    /// The caller token issuer (`iss`) written into `[[callers.issuers]]`.
    pub caller_issuer: String,
}

impl Options {
    /// Defaults for everything but the image.
    pub fn new(image: &str) -> Options {
        Options {
            image: image.to_string(),
            model: None,
            model_path: None,
            model_port: None,
            container: None,
            workload_identity: None,
            registry: Registry::ConfigMap,
            proxy_port: None,
            admin_port: None,
            monitoring_namespace: "monitoring".into(),
            caller_issuer: "https://kubernetes.default.svc.cluster.local".into(),
        }
    }
}

/// Where approval records come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registry {
    /// The `provgate-approvals` ConfigMap, mounted as a directory.
    ConfigMap,
    /// An MLflow model registry at this URL.
    Mlflow(String),
    /// An HTTP registry at this URL.
    Http(String),
}

impl std::str::FromStr for Registry {
    type Err = String;

    /// `configmap`, `mlflow=URL` or `http=URL`; the URL must be `https://` (provgate reads
    /// registries over HTTPS only; `allow_plaintext` is for loopback test set-ups, never
    /// for a cluster service).
    fn from_str(s: &str) -> Result<Registry, String> {
        if let Some((_, url)) = s.split_once('=') {
            if !url.starts_with("https://") {
                return Err(format!(
                    "registry {s:?}: the URL must be https:// (registries are read over HTTPS only)"
                ));
            }
        }
        match s.split_once('=') {
            None if s == "configmap" => Ok(Registry::ConfigMap),
            Some(("mlflow", url)) if !url.is_empty() => Ok(Registry::Mlflow(url.into())),
            Some(("http", url)) if !url.is_empty() => Ok(Registry::Http(url.into())),
            _ => Err(format!(
                "registry {s:?}: use configmap, mlflow=URL or http=URL"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the input is not YAML: {0}")]
    Parse(#[source] serde_norway::Error),
    #[error("could not write YAML: {0}")]
    Write(#[source] serde_norway::Error),
    #[error("refusing to inject {object}: {reason}")]
    Refused { object: String, reason: String },
    #[error("nothing to inject: the input holds no Deployment, StatefulSet or Pod")]
    NoWorkload,
}

/// The output manifests and what was done (for standard error).
#[derive(Debug)]
pub struct Injected {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// The model servers whose flags `inject` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Vllm,
    Tgi,
    Ollama,
    Triton,
    Kserve,
    Unknown,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Vllm => "vLLM",
            Server::Tgi => "TGI",
            Server::Ollama => "Ollama",
            Server::Triton => "Triton",
            Server::Kserve => "KServe",
            Server::Unknown => "an unrecognised model server",
        }
    }

    /// The `[upstream.probe] kind` that asks this server what it serves.
    fn probe(self) -> Option<&'static str> {
        match self {
            Server::Vllm => Some("openai"),
            Server::Ollama => Some("ollama"),
            Server::Triton | Server::Kserve => Some("kserve_v2"),
            Server::Tgi | Server::Unknown => None,
        }
    }
}

/// Adds the sidecar to every workload in `input` (YAML, one or more documents).
pub fn inject(input: &str, opts: &Options) -> Result<Injected, InjectError> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(input) {
        let mut v = Value::deserialize(doc).map_err(InjectError::Parse)?;
        if !v.is_null() {
            octal_modes(&mut v);
            docs.push(v);
        }
    }
    let existing = names(&docs);
    let mut notes = Vec::new();
    let mut workloads = 0;
    let mut pods = Vec::new();
    let mut out = Vec::new();
    for mut doc in docs {
        let extra = if kind(&doc) == "List" {
            let mut added = Vec::new();
            if let Some(Value::Sequence(items)) = doc.get_mut("items") {
                for item in items.iter_mut() {
                    if is_workload(item) {
                        workloads += 1;
                        added.extend(inject_workload(
                            item, opts, &existing, &mut pods, &mut notes,
                        )?);
                    }
                }
                items.extend(added);
            }
            Vec::new()
        } else if is_workload(&doc) {
            workloads += 1;
            inject_workload(&mut doc, opts, &existing, &mut pods, &mut notes)?
        } else {
            Vec::new()
        };
        out.push(doc);
        out.extend(extra);
    }
    if workloads == 0 {
        return Err(InjectError::NoWorkload);
    }
    for doc in out.iter_mut() {
        if kind(doc) == "List" {
            if let Some(Value::Sequence(items)) = doc.get_mut("items") {
                for item in items.iter_mut() {
                    retarget_service(item, &pods, &mut notes);
                }
            }
        } else {
            retarget_service(doc, &pods, &mut notes);
        }
    }
    let mut yaml = String::new();
    for (i, doc) in out.iter().enumerate() {
        if i > 0 {
            yaml.push_str("---\n");
        }
        yaml.push_str(&serde_norway::to_string(doc).map_err(InjectError::Write)?);
    }
    Ok(Injected { yaml, notes })
}

// === workloads ===

/// What the Service pass needs to know about an injected pod.
struct InjectedPod {
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    model_port: u16,
    /// Names the model container gives its model port.
    model_port_names: Vec<String>,
}

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn is_workload(v: &Value) -> bool {
    matches!(kind(v), "Deployment" | "StatefulSet" | "Pod")
}

fn meta_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("metadata")?.get(key)?.as_str()
}

/// (kind, namespace, name) of every object, so generated objects are not added twice.
fn names(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    let mut add = |v: &Value| {
        set.insert((
            kind(v).to_string(),
            meta_str(v, "namespace").unwrap_or("").to_string(),
            meta_str(v, "name").unwrap_or("").to_string(),
        ));
    };
    for d in docs {
        if kind(d) == "List" {
            for item in d
                .get("items")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                add(item);
            }
        } else {
            add(d);
        }
    }
    set
}

/// Injects one workload; returns the objects to add after it (config map, policy).
fn inject_workload(
    doc: &mut Value,
    opts: &Options,
    existing: &BTreeSet<(String, String, String)>,
    pods: &mut Vec<InjectedPod>,
    notes: &mut Vec<String>,
) -> Result<Vec<Value>, InjectError> {
    let name = meta_str(doc, "name").unwrap_or("").to_string();
    let namespace = meta_str(doc, "namespace").map(str::to_string);
    let object = format!("{}/{}", kind(doc), name);
    let refuse = |reason: String| InjectError::Refused {
        object: object.clone(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("it has no metadata.name".into()));
    }
    let is_pod = kind(doc) == "Pod";
    // The pod's labels select it for the NetworkPolicy and the Service.
    let selector = if is_pod {
        string_map(doc.get("metadata").and_then(|m| m.get("labels")))
    } else {
        let from_selector = string_map(
            doc.get("spec")
                .and_then(|s| s.get("selector"))
                .and_then(|s| s.get("matchLabels")),
        );
        if from_selector.is_empty() {
            string_map(
                doc.get("spec")
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("metadata"))
                    .and_then(|m| m.get("labels")),
            )
        } else {
            from_selector
        }
    };
    let pod_labels = if is_pod {
        selector.clone()
    } else {
        string_map(
            doc.get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels")),
        )
    };
    let (pod_meta, spec) = pod_parts(doc, is_pod).ok_or_else(|| {
        refuse("it has no pod spec (spec.template.spec, or spec for a Pod)".into())
    })?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(refuse(
            "hostNetwork: true shares the node's network, so the model server's loopback \
             is the node's and provgate cannot be the only way in"
                .into(),
        ));
    }
    let containers = match spec.get("containers") {
        Some(Value::Sequence(c)) if !c.is_empty() => c,
        _ => return Err(refuse("it has no container to guard".into())),
    };
    if containers
        .iter()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER))
    {
        notes.push(format!("{object}: already injected, unchanged"));
        return Ok(Vec::new());
    }
    if selector.is_empty() {
        return Err(refuse(
            "its pods have no labels, so no NetworkPolicy or Service can select them".into(),
        ));
    }
    for v in [CONFIG_VOLUME, APPROVALS_VOLUME, KEYS_VOLUME, AUDIT_VOLUME] {
        if volume_names(spec).contains(v) {
            return Err(refuse(format!("it already has a volume named {v}")));
        }
    }

    let index = pick_container(containers, opts).map_err(&refuse)?;
    let chosen = containers
        .get(index)
        .ok_or_else(|| refuse("no containers".to_string()))?;
    let server = detect(chosen);
    let container_name = chosen
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let model_port = match opts.model_port {
        Some(p) => p,
        None => model_port(chosen, server).ok_or_else(|| {
            refuse(format!(
                "cannot tell which port container {container_name} ({}) serves on: pass \
                 --model-port",
                server.label()
            ))
        })?,
    };
    let model_path = match &opts.model_path {
        Some(p) => p.clone(),
        None => model_path(chosen, server).ok_or_else(|| {
            refuse(format!(
                "cannot tell where container {container_name} ({}) reads its model from: \
                 pass --model-path",
                server.label()
            ))
        })?,
    };
    let mount = model_mount(chosen, &model_path).ok_or_else(|| {
        refuse(format!(
            "model volume not found: no volume is mounted at or above {model_path} in \
             container {container_name}, so provgate cannot read the files it serves"
        ))
    })?;
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => model_name(chosen, server).ok_or_else(|| {
            refuse(format!(
                "cannot tell the served model's name from container {container_name} ({}): \
                 pass --model",
                server.label()
            ))
        })?,
    };
    let taken: BTreeSet<u16> = containers
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        })
        .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .chain([model_port])
        .collect();
    let proxy_port = pick_port(opts.proxy_port, 8080, &taken, &[]).map_err(&refuse)?;
    let admin_port = pick_port(opts.admin_port, 9090, &taken, &[proxy_port]).map_err(&refuse)?;
    let model_port_names: Vec<String> = chosen
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter(|p| p.get("containerPort").and_then(Value::as_u64) == Some(model_port.into()))
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();

    // The model server: bound to loopback where its flags allow it.
    let rebound = match spec.get_mut("containers") {
        Some(Value::Sequence(c)) => match c.get_mut(index) {
            Some(chosen) => rebind(chosen, server, model_port),
            None => Err("no containers".into()),
        },
        _ => Err("no containers".into()),
    };
    match &rebound {
        Ok(how) => notes.push(format!(
            "{object}: {} in container {container_name} now listens on 127.0.0.1:{model_port} \
             ({how})",
            server.label()
        )),
        Err(why) => notes.push(format!(
            "{object}: container {container_name} ({}) NOT rebound to loopback ({why}); the \
             NetworkPolicy admits only ports {proxy_port} and {admin_port}, so keep it",
            server.label()
        )),
    }
    if rebound.is_ok() {
        if let Some(Value::Sequence(c)) = spec.get_mut("containers") {
            if let Some(chosen) = c.get_mut(index) {
                exec_probes(chosen, server, model_port, &model_port_names);
            }
        }
    }

    let namespace_or_default = namespace.clone().unwrap_or_else(|| "default".into());
    let service_account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let identity = opts.workload_identity.clone().unwrap_or_else(|| {
        format!("spiffe://cluster.local/ns/{namespace_or_default}/sa/{service_account}")
    });
    let config_map = format!("{name}-provgate");
    let toml = config_toml(&ConfigText {
        object: &object,
        proxy_port,
        admin_port,
        model_port,
        probe: server.probe(),
        identity: &identity,
        model: &model,
        model_path: &model_path,
        registry: &opts.registry,
        issuer: &opts.caller_issuer,
    });

    // The sidecar, its volumes, and the pod annotation.
    let mut mounts = vec![
        mapping([
            ("name", CONFIG_VOLUME.into()),
            ("mountPath", CONFIG_DIR.into()),
            ("readOnly", true.into()),
        ]),
        mapping([
            ("name", KEYS_VOLUME.into()),
            ("mountPath", KEYS_DIR.into()),
            ("readOnly", true.into()),
        ]),
    ];
    if opts.registry == Registry::ConfigMap {
        // A whole directory (no subPath), so kubelet's updates reach provgate's watcher.
        mounts.push(mapping([
            ("name", APPROVALS_VOLUME.into()),
            ("mountPath", APPROVALS_DIR.into()),
            ("readOnly", true.into()),
        ]));
    }
    let mut model_mount = Mapping::new();
    model_mount.insert("name".into(), mount.name.clone().into());
    model_mount.insert("mountPath".into(), mount.mount_path.clone().into());
    if let Some(sub) = &mount.sub_path {
        model_mount.insert("subPath".into(), sub.clone().into());
    }
    model_mount.insert("readOnly".into(), true.into());
    mounts.push(Value::Mapping(model_mount));
    mounts.push(mapping([
        ("name", AUDIT_VOLUME.into()),
        ("mountPath", AUDIT_DIR.into()),
    ]));
    let sidecar = sidecar(&opts.image, proxy_port, admin_port, mounts);
    if let Some(Value::Sequence(c)) = spec.get_mut("containers") {
        c.push(sidecar);
    }
    let volumes = seq_entry(spec, "volumes");
    volumes.push(mapping([
        ("name", CONFIG_VOLUME.into()),
        ("configMap", mapping([("name", config_map.clone().into())])),
    ]));
    volumes.push(mapping([
        ("name", KEYS_VOLUME.into()),
        ("configMap", mapping([("name", KEYS_CONFIGMAP.into())])),
    ]));
    if opts.registry == Registry::ConfigMap {
        volumes.push(mapping([
            ("name", APPROVALS_VOLUME.into()),
            ("configMap", mapping([("name", APPROVALS_CONFIGMAP.into())])),
        ]));
    }
    volumes.push(mapping([
        ("name", AUDIT_VOLUME.into()),
        ("emptyDir", mapping([("sizeLimit", "1Gi".into())])),
    ]));
    map_entry(pod_meta, "annotations").insert(ANNOTATION.into(), env!("CARGO_PKG_VERSION").into());
    notes.push(format!(
        "{object}: provgate guards model {model} at {model_path} (volume {}), proxy port \
         {proxy_port}, admin port {admin_port}, workload identity {identity}; it needs the \
         ConfigMaps {KEYS_CONFIGMAP}{}",
        mount.name,
        if opts.registry == Registry::ConfigMap {
            format!(" and {APPROVALS_CONFIGMAP}")
        } else {
            String::new()
        }
    ));

    // The generated ConfigMap and NetworkPolicy, unless the input already has them.
    let ns = namespace.clone().unwrap_or_default();
    let mut extra = Vec::new();
    let policy = format!("{name}-provgate");
    if !existing.contains(&("ConfigMap".into(), ns.clone(), config_map.clone())) {
        extra.push(object_value(
            "v1",
            "ConfigMap",
            &config_map,
            namespace.as_deref(),
            "data",
            mapping([("provgate.toml", toml.into())]),
        ));
    }
    if !existing.contains(&("NetworkPolicy".into(), ns, policy.clone())) {
        extra.push(object_value(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            &policy,
            namespace.as_deref(),
            "spec",
            network_policy_spec(
                &selector,
                proxy_port,
                admin_port,
                &opts.monitoring_namespace,
            ),
        ));
    }
    pods.push(InjectedPod {
        namespace,
        labels: pod_labels,
        model_port,
        model_port_names,
    });
    Ok(extra)
}

/// The pod's metadata (a Pod's own, or the template's) and spec.
fn pod_parts(doc: &mut Value, is_pod: bool) -> Option<(&mut Value, &mut Value)> {
    let holder = if is_pod {
        doc
    } else {
        doc.get_mut("spec")?.get_mut("template")?
    };
    let holder = holder.as_mapping_mut()?;
    if !holder.contains_key("metadata") {
        holder.insert("metadata".into(), Value::Mapping(Mapping::new()));
    }
    let mut meta = None;
    let mut spec = None;
    for (k, v) in holder.iter_mut() {
        match k.as_str() {
            Some("metadata") => meta = Some(v),
            Some("spec") => spec = Some(v),
            _ => {}
        }
    }
    Some((meta?, spec.filter(|s| s.is_mapping())?))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
        .collect()
}

fn volume_names(spec: &Value) -> BTreeSet<String> {
    spec.get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn pick_container(containers: &[Value], opts: &Options) -> Result<usize, String> {
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
        .collect();
    if let Some(want) = &opts.container {
        return names.iter().position(|n| n == want).ok_or_else(|| {
            format!(
                "it has no container named {want} (has {})",
                names.join(", ")
            )
        });
    }
    if containers.len() == 1 {
        return Ok(0);
    }
    let known: Vec<usize> = containers
        .iter()
        .enumerate()
        .filter(|(_, c)| detect(c) != Server::Unknown)
        .map(|(i, _)| i)
        .collect();
    match known.as_slice() {
        [one] => Ok(*one),
        _ => Err(format!(
            "it has several containers ({}) and not exactly one recognised model server: pass \
             --container",
            names.join(", ")
        )),
    }
}

fn pick_port(
    wanted: Option<u16>,
    from: u16,
    taken: &BTreeSet<u16>,
    also: &[u16],
) -> Result<u16, String> {
    let free = |p: u16| !taken.contains(&p) && !also.contains(&p);
    match wanted {
        Some(p) if free(p) => Ok(p),
        Some(p) => Err(format!("port {p} is already used in the pod")),
        None => (from..from.saturating_add(100))
            .find(|&p| free(p))
            .ok_or_else(|| format!("no free port from {from}")),
    }
}

// === model servers ===

/// The container's command and arguments, as (in `args`?, index, token).
fn tokens(c: &Value) -> Vec<(bool, usize, String)> {
    let mut out = Vec::new();
    for (is_args, key) in [(false, "command"), (true, "args")] {
        for (i, t) in c
            .get(key)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let s = match t {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            out.push((is_args, i, s));
        }
    }
    out
}

/// A started-by-shell container (`sh -c "..."`): its flags are inside one string.
fn is_shell(c: &Value) -> bool {
    let t = tokens(c);
    t.iter().any(|(_, _, s)| s == "-c")
        && t.first().is_some_and(|(_, _, s)| {
            let base = s.rsplit('/').next().unwrap_or(s);
            matches!(base, "sh" | "bash" | "dash" | "ash" | "zsh")
        })
}

fn detect(c: &Value) -> Server {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let words: Vec<String> = tokens(c)
        .into_iter()
        .map(|(_, _, s)| s.to_ascii_lowercase())
        .collect();
    let has = |needle: &str| image.contains(needle) || words.iter().any(|w| w.contains(needle));
    if has("vllm") {
        Server::Vllm
    } else if has("text-generation-inference") || has("text-generation-launcher") {
        Server::Tgi
    } else if has("ollama") {
        Server::Ollama
    } else if has("tritonserver") {
        Server::Triton
    } else if has("kserve") || has("--model_name") || has("--http_port") {
        Server::Kserve
    } else {
        Server::Unknown
    }
}

/// The value of the first of `names` (`--f=v` or `--f v`).
fn flag(c: &Value, names: &[&str]) -> Option<String> {
    let t = tokens(c);
    for (i, (_, _, s)) in t.iter().enumerate() {
        for n in names {
            if let Some(v) = s.strip_prefix(n).and_then(|r| r.strip_prefix('=')) {
                return Some(v.to_string());
            }
            if s == n {
                return t.get(i + 1).map(|(_, _, v)| v.clone());
            }
        }
    }
    None
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    c.get("env")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn model_port(c: &Value, server: Server) -> Option<u16> {
    let parse = |s: Option<String>| s.and_then(|v| v.parse::<u16>().ok());
    match server {
        Server::Vllm => parse(flag(c, &["--port"])).or(Some(8000)),
        Server::Tgi => parse(flag(c, &["--port"]))
            .or_else(|| parse(env_value(c, "PORT")))
            .or(Some(80)),
        Server::Ollama => match env_value(c, "OLLAMA_HOST") {
            Some(h) => parse(h.rsplit_once(':').map(|(_, p)| p.to_string())).or(Some(11434)),
            None => Some(11434),
        },
        Server::Triton => parse(flag(c, &["--http-port"])).or(Some(8000)),
        Server::Kserve => parse(flag(c, &["--http_port"])).or(Some(8080)),
        Server::Unknown => {
            let ports: Vec<u64> = c
                .get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
                .collect();
            match ports.as_slice() {
                [one] => u16::try_from(*one).ok(),
                _ => None,
            }
        }
    }
}

fn model_path(c: &Value, server: Server) -> Option<String> {
    let path = match server {
        Server::Vllm => flag(c, &["--model"]).or_else(|| {
            // `vllm serve MODEL`
            let t = tokens(c);
            let i = t.iter().position(|(_, _, s)| s == "serve")?;
            t.get(i + 1)
                .map(|(_, _, s)| s.clone())
                .filter(|s| !s.starts_with('-'))
        }),
        Server::Tgi => flag(c, &["--model-id"]),
        Server::Ollama => env_value(c, "OLLAMA_MODELS").or(Some("/root/.ollama/models".into())),
        Server::Triton => flag(c, &["--model-repository", "--model-store"]),
        Server::Kserve => flag(c, &["--model_dir"]),
        Server::Unknown => None,
    }?;
    let path = path.strip_prefix("file://").unwrap_or(&path).to_string();
    path.starts_with('/').then_some(path)
}

fn model_name(c: &Value, server: Server) -> Option<String> {
    match server {
        Server::Vllm => flag(c, &["--served-model-name"])
            .or_else(|| flag(c, &["--model"]))
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            .filter(|s| !s.is_empty()),
        Server::Kserve => flag(c, &["--model_name"]),
        _ => None,
    }
}

struct Mount {
    name: String,
    mount_path: String,
    sub_path: Option<String>,
}

/// The container's volume mount at or above `path` (the deepest one).
fn model_mount(c: &Value, path: &str) -> Option<Mount> {
    let under = |mount: &str| {
        let m = mount.trim_end_matches('/');
        path == m || path.starts_with(&format!("{m}/")) || m.is_empty()
    };
    c.get("volumeMounts")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(Mount {
                name: m.get("name")?.as_str()?.to_string(),
                mount_path: m.get("mountPath")?.as_str()?.to_string(),
                sub_path: m.get("subPath").and_then(Value::as_str).map(str::to_string),
            })
        })
        .filter(|m| under(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
}

/// Moves the server's listener to loopback; Ok(what changed) or Err(why not).
fn rebind(c: &mut Value, server: Server, port: u16) -> Result<String, String> {
    let flag_name = match server {
        Server::Vllm => "--host",
        Server::Tgi => "--hostname",
        Server::Triton => "--http-address",
        Server::Ollama => {
            let value = format!("127.0.0.1:{port}");
            let env = seq_entry(c, "env");
            if let Some(e) = env
                .iter_mut()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("OLLAMA_HOST"))
            {
                if e.get("valueFrom").is_some() {
                    return Err("OLLAMA_HOST comes from valueFrom".into());
                }
                if let Some(m) = e.as_mapping_mut() {
                    m.insert("value".into(), value.clone().into());
                }
            } else {
                env.push(mapping([
                    ("name", "OLLAMA_HOST".into()),
                    ("value", value.clone().into()),
                ]));
            }
            return Ok(format!("OLLAMA_HOST={value}"));
        }
        Server::Kserve => return Err("KServe's model server has no bind-address flag".into()),
        Server::Unknown => return Err("its bind-address flag is unknown".into()),
    };
    if is_shell(c) {
        return Err(format!(
            "it is started through a shell; add {flag_name}=127.0.0.1 to its command yourself"
        ));
    }
    let want = format!("{flag_name}=127.0.0.1");
    let found = tokens(c)
        .into_iter()
        .enumerate()
        .find(|(_, (_, _, s))| s == flag_name || s.starts_with(&format!("{flag_name}=")));
    match found {
        Some((_, (is_args, i, s))) => {
            let key = if is_args { "args" } else { "command" };
            let list = seq_entry(c, key);
            if s == flag_name {
                // `--flag VALUE`: the value is the next token of the same list.
                match list.get_mut(i + 1) {
                    Some(value) => *value = "127.0.0.1".into(),
                    None => return Err(format!("{flag_name} has no value")),
                }
            } else if let Some(token) = list.get_mut(i) {
                // `i` is this token's position in `list` (from `tokens`).
                *token = want.clone().into();
            }
        }
        None => seq_entry(c, "args").push(want.clone().into()),
    }
    Ok(want)
}

/// kubelet's httpGet/tcpSocket probes connect to the pod IP, which a loopback listener no
/// longer answers: those aimed at the model port become exec probes run in the container.
fn exec_probes(c: &mut Value, server: Server, port: u16, port_names: &[String]) {
    for key in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(Value::Mapping(probe)) = c.get_mut(key) else {
            continue;
        };
        let aims = |h: Option<&Value>| {
            h.and_then(|h| h.get("port")).is_some_and(|p| match p {
                Value::Number(n) => n.as_u64() == Some(port.into()),
                Value::String(s) => port_names.contains(s) || s == &port.to_string(),
                _ => false,
            })
        };
        let http_path = if aims(probe.get("httpGet")) {
            Some(
                probe
                    .get("httpGet")
                    .and_then(|h| h.get("path"))
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string(),
            )
        } else if aims(probe.get("tcpSocket")) {
            None
        } else {
            continue;
        };
        let url = format!(
            "http://127.0.0.1:{port}{}",
            http_path.as_deref().unwrap_or("")
        );
        let command: Vec<String> = match (server, &http_path) {
            (Server::Ollama, _) => vec!["ollama".into(), "list".into()],
            (Server::Triton, Some(_)) => vec![
                "curl".into(),
                "-fsS".into(),
                "-o".into(),
                "/dev/null".into(),
                url,
            ],
            (Server::Triton, None) => vec![
                "bash".into(),
                "-c".into(),
                format!("</dev/tcp/127.0.0.1/{port}"),
            ],
            (_, Some(_)) => vec![
                "python3".into(),
                "-c".into(),
                format!("import urllib.request; urllib.request.urlopen('{url}', timeout=2)"),
            ],
            (_, None) => vec![
                "python3".into(),
                "-c".into(),
                format!("import socket; socket.create_connection(('127.0.0.1', {port}), 2)"),
            ],
        };
        probe.remove("httpGet");
        probe.remove("tcpSocket");
        probe.insert(
            "exec".into(),
            mapping([(
                "command",
                Value::Sequence(command.into_iter().map(Value::from).collect()),
            )]),
        );
    }
}

// === generated objects ===

fn sidecar(image: &str, proxy_port: u16, admin_port: u16, mounts: Vec<Value>) -> Value {
    let port = |name: &str, p: u16| {
        mapping([
            ("name", name.into()),
            ("containerPort", p.into()),
            ("protocol", "TCP".into()),
        ])
    };
    let http_get = |path: &str| mapping([("path", path.into()), ("port", ADMIN_PORT_NAME.into())]);
    mapping([
        ("name", CONTAINER.into()),
        ("image", image.into()),
        (
            "args",
            Value::Sequence(vec![
                "run".into(),
                "-c".into(),
                format!("{CONFIG_DIR}/provgate.toml").into(),
            ]),
        ),
        (
            "ports",
            Value::Sequence(vec![
                port(PROXY_PORT_NAME, proxy_port),
                port(ADMIN_PORT_NAME, admin_port),
            ]),
        ),
        // Ready once the model is hashed and the records are loaded.
        (
            "readinessProbe",
            mapping([
                ("httpGet", http_get("/readyz")),
                ("periodSeconds", 5.into()),
                ("failureThreshold", 2.into()),
            ]),
        ),
        // /healthz answers while a large model is still being hashed.
        (
            "livenessProbe",
            mapping([
                ("httpGet", http_get("/healthz")),
                ("initialDelaySeconds", 5.into()),
                ("periodSeconds", 10.into()),
                ("failureThreshold", 3.into()),
            ]),
        ),
        (
            "resources",
            mapping([
                (
                    "requests",
                    mapping([("cpu", "250m".into()), ("memory", "128Mi".into())]),
                ),
                ("limits", mapping([("memory", "512Mi".into())])),
            ]),
        ),
        (
            "securityContext",
            mapping([
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                ("runAsNonRoot", true.into()),
                ("runAsUser", 10001.into()),
                (
                    "capabilities",
                    mapping([("drop", Value::Sequence(vec!["ALL".into()]))]),
                ),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ])
}

fn network_policy_spec(
    selector: &BTreeMap<String, String>,
    proxy_port: u16,
    admin_port: u16,
    monitoring: &str,
) -> Value {
    let labels: Mapping = selector
        .iter()
        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
        .collect();
    let port = |p: u16| {
        Value::Sequence(vec![mapping([
            ("port", p.into()),
            ("protocol", "TCP".into()),
        ])])
    };
    mapping([
        (
            "podSelector",
            mapping([("matchLabels", Value::Mapping(labels))]),
        ),
        ("policyTypes", Value::Sequence(vec!["Ingress".into()])),
        (
            "ingress",
            Value::Sequence(vec![
                // Callers: provgate authenticates every one of them.
                mapping([("ports", port(proxy_port))]),
                // The admin port: the monitoring namespace only.
                mapping([
                    (
                        "from",
                        Value::Sequence(vec![mapping([(
                            "namespaceSelector",
                            mapping([(
                                "matchLabels",
                                mapping([("kubernetes.io/metadata.name", monitoring.into())]),
                            )]),
                        )])]),
                    ),
                    ("ports", port(admin_port)),
                ]),
            ]),
        ),
    ])
}

fn object_value(
    api_version: &str,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    body_key: &str,
    body: Value,
) -> Value {
    let mut meta = Mapping::new();
    meta.insert("name".into(), name.into());
    if let Some(ns) = namespace {
        meta.insert("namespace".into(), ns.into());
    }
    meta.insert(
        "labels".into(),
        mapping([("app.kubernetes.io/managed-by", "provgate-inject".into())]),
    );
    mapping([
        ("apiVersion", api_version.into()),
        ("kind", kind.into()),
        ("metadata", Value::Mapping(meta)),
        (body_key, body),
    ])
}

struct ConfigText<'a> {
    object: &'a str,
    proxy_port: u16,
    admin_port: u16,
    model_port: u16,
    probe: Option<&'a str>,
    identity: &'a str,
    model: &'a str,
    model_path: &'a str,
    registry: &'a Registry,
    issuer: &'a str,
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The sidecar's `provgate.toml`.
fn config_toml(c: &ConfigText) -> String {
    let probe = c
        .probe
        .map(|k| format!("\n[upstream.probe]\nkind = {}\ninterval = \"5s\"\n", q(k)))
        .unwrap_or_default();
    let registry = match c.registry {
        Registry::ConfigMap => format!(
            "kind = \"dir\"\n# The {APPROVALS_CONFIGMAP} ConfigMap, mounted as a whole directory.\npath = {}",
            q(APPROVALS_DIR)
        ),
        Registry::Mlflow(url) => format!("kind = \"mlflow\"\nurl = {}", q(url)),
        Registry::Http(url) => format!("kind = \"http\"\nurl = {}", q(url)),
    };
    format!(
        r#"# Written by `provgate inject` for {object}; config/provgate.toml documents every key.
# provgate reads it at start-up: roll the workload after changing it.
[listen]
address = "0.0.0.0:{proxy}"

[admin]
# /metrics, /healthz, /readyz: the NetworkPolicy admits the monitoring namespace only.
address = "0.0.0.0:{admin}"

[upstream]
# The model server in the same pod, on loopback.
address = "127.0.0.1:{model_port}"
protocol = "http1"
{probe}
[mode]
enforce = true

[workload]
identity = {identity}

[artefact]
model = {model}
path = {path}
hash_threads = 2

[registry]
{registry}
max_stale = "5m"

[trust]
approver_keys = "{keys}/approvers.jwks.json"

[[callers.issuers]]
issuer = {issuer}
jwks_file = "{keys}/issuer.jwks.json"
audiences = ["provgate"]
algorithms = ["RS256", "ES256"]

[tiers.internal]

[audit]
path = "{audit}/provgate-audit.jsonl"

[server]
threads = 2

[log]
format = "json"
"#,
        object = c.object,
        proxy = c.proxy_port,
        admin = c.admin_port,
        model_port = c.model_port,
        identity = q(c.identity),
        model = q(c.model),
        path = q(c.model_path),
        issuer = q(c.issuer),
        keys = KEYS_DIR,
        audit = AUDIT_DIR,
    )
}

// === Services ===

/// Points a Service's port that targets an injected pod's model port at provgate instead.
fn retarget_service(doc: &mut Value, pods: &[InjectedPod], notes: &mut Vec<String>) {
    if kind(doc) != "Service" {
        return;
    }
    let name = meta_str(doc, "name").unwrap_or("").to_string();
    let namespace = meta_str(doc, "namespace").map(str::to_string);
    let selector = string_map(doc.get("spec").and_then(|s| s.get("selector")));
    if selector.is_empty() {
        return;
    }
    let Some(pod) = pods.iter().find(|p| {
        p.namespace == namespace
            && selector
                .iter()
                .all(|(k, v)| p.labels.get(k).is_some_and(|l| l == v))
    }) else {
        return;
    };
    let Some(Value::Sequence(ports)) = doc.get_mut("spec").and_then(|s| s.get_mut("ports")) else {
        return;
    };
    for port in ports.iter_mut() {
        let target = port.get("targetPort").or_else(|| port.get("port"));
        let hits = match target {
            Some(Value::Number(n)) => n.as_u64() == Some(pod.model_port.into()),
            Some(Value::String(s)) => {
                pod.model_port_names.contains(s) || s == &pod.model_port.to_string()
            }
            _ => false,
        };
        if hits {
            if let Some(m) = port.as_mapping_mut() {
                m.insert("targetPort".into(), PROXY_PORT_NAME.into());
            }
            notes.push(format!(
                "Service/{name}: port {} now targets provgate",
                port.get("port").and_then(Value::as_u64).unwrap_or(0)
            ));
        } else if target != Some(&Value::from(PROXY_PORT_NAME)) {
            notes.push(format!(
                "Service/{name}: port {} does not target the model server's HTTP port and is                  left as it is, unguarded; the NetworkPolicy admits only provgate's ports",
                port.get("port").and_then(Value::as_u64).unwrap_or(0)
            ));
        }
    }
}

// === small YAML helpers ===

/// Kubernetes reads YAML 1.1, where a file mode written `0644` is octal (420); YAML 1.2, which
/// serde_norway reads, makes it the string "0644", which Kubernetes would then reject. File
/// modes (`defaultMode`, and `mode` of projected items) are integers in every Kubernetes API,
/// so such a string under those keys is turned back into the number it meant.
fn octal_modes(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let is_mode = matches!(k.as_str(), Some("defaultMode" | "mode"));
                let octal = match item {
                    Value::String(s) if is_mode => s
                        .strip_prefix('0')
                        .filter(|o| !o.is_empty() && o.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                        .and_then(|o| u64::from_str_radix(o, 8).ok()),
                    _ => None,
                };
                match octal {
                    Some(n) => *item = Value::from(n),
                    None => octal_modes(item),
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(octal_modes),
        Value::Tagged(t) => octal_modes(&mut t.value),
        _ => {}
    }
}

fn mapping<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// `v[key]` as a sequence, created (or replaced, if it is not one) when missing.
fn seq_entry<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    let map = mapping_of(v);
    let entry = map
        .entry(key.into())
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if !entry.is_sequence() {
        *entry = Value::Sequence(Vec::new());
    }
    match entry {
        Value::Sequence(s) => s,
        // Made a sequence just above.
        #[allow(clippy::unreachable)]
        _ => unreachable!("entry is a sequence"),
    }
}

/// `v[key]` as a mapping, created when missing.
fn map_entry<'a>(v: &'a mut Value, key: &str) -> &'a mut Mapping {
    let map = mapping_of(v);
    let entry = map
        .entry(key.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    mapping_of(entry)
}

/// `v` as a mapping (replacing a null or scalar, which Kubernetes would reject anyway).
fn mapping_of(v: &mut Value) -> &mut Mapping {
    if !v.is_mapping() {
        *v = Value::Mapping(Mapping::new());
    }
    match v {
        Value::Mapping(m) => m,
        // Made a mapping just above.
        #[allow(clippy::unreachable)]
        _ => unreachable!("value is a mapping"),
    }
}
