//! The KMS emulator the tests run (`tests/kms/emulator.py`: moto's server, with disabled keys
//! refused as real KMS refuses them), and helpers to talk to it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use encrypted_types::kek::aws::AwsKmsConfig;

/// A `moto_server` on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Emulator {
    child: Child,
    /// Its endpoint.
    pub url: String,
    log: tempfile::NamedTempFile,
}

impl Emulator {
    pub fn start() -> Self {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/kms/emulator.py"),
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().expect("the emulator's log")))
            .spawn()
            .expect("python3 is needed to run the KMS emulator (moto)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the KMS emulator did not start on port {port}: python3 -m pip install 'moto[server]' (.ci/run does)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// KMS requests served so far, counted from the emulator's own access log (one line per
    /// request; KMS requests are `POST /`). Waits until the count holds still, since a line is
    /// written after its response.
    pub fn requests(&self) -> usize {
        let count = || {
            std::fs::read_to_string(self.log.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("\"POST / HTTP"))
                .count()
        };
        let mut last = count();
        loop {
            std::thread::sleep(Duration::from_millis(150));
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// `DisableKey` (`enabled` false) or `EnableKey` on `key_id`.
    pub fn set_enabled(&self, key_id: &str, enabled: bool) {
        let (client, rt) = client(&self.url);
        if enabled {
            rt.block_on(client.enable_key().key_id(key_id).send())
                .expect("EnableKey");
        } else {
            rt.block_on(client.disable_key().key_id(key_id).send())
                .expect("DisableKey");
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config(url: &str, key_id: &str, timeout: Duration) -> AwsKmsConfig {
    AwsKmsConfig {
        key_id: key_id.into(),
        region: "us-east-1".into(),
        endpoint_url: Some(url.into()),
        credentials: Some(("testing".into(), "testing".into())),
        timeout,
    }
}

/// A KMS client of the emulator, with a runtime to drive it.
fn client(url: &str) -> (aws_sdk_kms::Client, tokio::runtime::Runtime) {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    (aws_sdk_kms::Client::from_conf(conf), rt)
}

/// Creates a KMS key in the emulator.
pub fn create_key(url: &str) -> String {
    let (client, rt) = client(url);
    let out = rt
        .block_on(
            client
                .create_key()
                .description("encrypted-types test KEK")
                .send(),
        )
        .unwrap();
    out.key_metadata().unwrap().key_id().to_owned()
}
