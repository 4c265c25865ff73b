//! A real MLflow tracking server (model registry, SQLite store) on 127.0.0.1, from the
//! virtual environment `scripts/setup.sh --mlflow` makes (`PROVGATE_MLFLOW` is its python).
//!
//! MLflow runs in its own process group, so stopping it stops its web workers too, and a
//! watchdog stops the group when the test process ends however it ends.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// The python of the MLflow environment, when the test script provided one.
pub fn python() -> Option<PathBuf> {
    std::env::var_os("PROVGATE_MLFLOW").map(PathBuf::from)
}

pub struct MlflowServer {
    pub url: String,
    port: u16,
    python: PathBuf,
    dir: tempfile::TempDir,
    /// The server and its watchdog.
    child: Mutex<Option<(Child, Child)>>,
}

impl MlflowServer {
    /// Starts a server on a free port and waits until it answers (the first start migrates
    /// the database: tens of seconds).
    pub async fn start(python: PathBuf) -> MlflowServer {
        let port = super::free_port().port();
        let server = MlflowServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            python,
            dir: tempfile::tempdir().unwrap(),
            child: Mutex::new(None),
        };
        server.launch();
        server.wait_up(Duration::from_secs(180)).await;
        server
    }

    fn launch(&self) {
        let db = format!("sqlite:///{}", self.dir.path().join("mlflow.db").display());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(&self.python)
            .args(["-m", "mlflow", "server", "--backend-store-uri", &db])
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--workers", "1"])
            .current_dir(self.dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mlflow server");
        let watchdog = format!(
            // dash's `kill` takes no `--`: `kill -TERM -PGID` is the portable spelling.
            "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -TERM -{} 2>/dev/null",
            std::process::id(),
            child.id()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mlflow watchdog");
        *self.child.lock().unwrap() = Some((child, watchdog));
    }

    /// A client for this call: the server outlives any one test's runtime, so it keeps no
    /// connection pool of its own.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mlflow.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn wait_up(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let up = self
                .client()
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return;
            }
            if let Some((child, _)) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mlflow server exited ({status}):\n{}", self.logs());
                }
            }
            assert!(
                Instant::now() < deadline,
                "mlflow server not up within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the server (and its workers), as a crash would, and waits until the port
    /// refuses connections.
    pub async fn stop(&self) {
        self.kill("-KILL");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "mlflow still listening");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the server again on the same port and database.
    pub async fn restart(&self) {
        self.launch();
        self.wait_up(Duration::from_secs(120)).await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let url = format!("{}/api/2.0/mlflow/{path}", self.url);
        let r = self
            .client()
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        let exists = text.contains("RESOURCE_ALREADY_EXISTS");
        assert!(status.is_success() || exists, "{url}: {status}: {text}");
    }

    /// Creates a model version (and its registered model, once); returns its version.
    pub async fn create_version(&self, model: &str) -> String {
        self.call(
            reqwest::Method::POST,
            "registered-models/create",
            serde_json::json!({ "name": model }),
        )
        .await;
        let r: serde_json::Value = self
            .client()
            .post(format!("{}/api/2.0/mlflow/model-versions/create", self.url))
            .json(&serde_json::json!({ "name": model, "source": "s3://models/provgate-test" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["model_version"]["version"]
            .as_str()
            .unwrap_or_else(|| panic!("no version in {r}"))
            .to_string()
    }

    pub async fn set_tag(&self, model: &str, version: &str, key: &str, value: &str) {
        self.call(
            reqwest::Method::POST,
            "model-versions/set-tag",
            serde_json::json!({ "name": model, "version": version, "key": key, "value": value }),
        )
        .await;
    }

    pub async fn delete_tag(&self, model: &str, version: &str, key: &str) {
        self.call(
            reqwest::Method::DELETE,
            "model-versions/delete-tag",
            serde_json::json!({ "name": model, "version": version, "key": key }),
        )
        .await;
    }

    pub async fn delete_version(&self, model: &str, version: &str) {
        self.call(
            reqwest::Method::DELETE,
            "model-versions/delete",
            serde_json::json!({ "name": model, "version": version }),
        )
        .await;
    }

    /// The tags of a model version.
    pub async fn tags(&self, model: &str, version: &str) -> serde_json::Value {
        let r: serde_json::Value = self
            .client()
            .get(format!("{}/api/2.0/mlflow/model-versions/get", self.url))
            .query(&[("name", model), ("version", version)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["model_version"]["tags"].clone()
    }
}

impl MlflowServer {
    /// Signals the server's process group and reaps it and its watchdog.
    fn kill(&self, signal: &str) {
        if let Some((mut child, mut watchdog)) = self.child.lock().unwrap().take() {
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill("-TERM");
    }
}
