//! A private PostgreSQL cluster per test: `initdb` and `pg_ctl` from Debian's `postgresql`
//! package (`/usr/lib/postgresql/<version>/bin`, installed by tests/setup.sh), in a temporary
//! directory, on a free loopback port, its socket in the same directory. Run as the
//! `postgres` user through `runuser` when the tests run as root (CI does; PostgreSQL refuses
//! to run as root). A role `gw` with a password owns a database `ledger`: the URL the tests
//! give the gateway carries that password, which every captured log is scanned for.
//!
//! The cluster is stopped by its postmaster's pid (SIGINT: a fast shutdown), waiting for the
//! server to be gone, also when the test fails ([`Drop`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::PATIENCE;

/// The test role's password: in every URL, so in every configuration the tests write, and
/// never in anything the gateway prints (it is in [`super::TEST_SECRETS`]).
pub const PG_PASSWORD: &str = "pg-Secret-9fQ2";

pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// Extra `-c` settings of the server (TLS).
    options: String,
    /// The CA that signed the server's certificate, for `sslrootcert` (TLS clusters only).
    pub ca: Option<PathBuf>,
    running: bool,
}

/// `/usr/lib/postgresql/<highest version>/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run tests/setup.sh")
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/initdb: run tests/setup.sh")
        .1
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The postgres user's uid and gid.
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no postgres user: run tests/setup.sh");
    // SAFETY: checked non-null above.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Gives `path` to the postgres user (when running as root).
fn give(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

impl PgCluster {
    /// A plain (no TLS) cluster, started, with the role and database.
    pub async fn start() -> PgCluster {
        Self::start_with(false).await
    }

    /// A cluster with `ssl = on` and a certificate for `localhost` and 127.0.0.1 from a test
    /// CA ([`PgCluster::ca`]).
    pub async fn start_tls() -> PgCluster {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        for d in [&data, &run] {
            std::fs::create_dir(d).unwrap();
            give(d);
        }
        let bin = bin_dir();
        let mut c = PgCluster {
            dir,
            port: free_port(),
            bin,
            options: String::new(),
            ca: None,
            running: false,
        };
        c.run_as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            ],
        );
        if tls {
            c.options = c.tls_files(&data);
        }
        c.start_first();
        let admin = c.admin().await;
        // Two statements: CREATE DATABASE cannot share a multi-statement query.
        admin
            .batch_execute(&format!("CREATE ROLE gw LOGIN PASSWORD '{PG_PASSWORD}'"))
            .await
            .unwrap();
        admin
            .batch_execute("CREATE DATABASE ledger OWNER gw")
            .await
            .unwrap();
        c
    }

    /// Writes the server's certificate and key into the data directory and a CA file beside
    /// it; returns the server options that use them.
    fn tls_files(&mut self, data: &Path) -> String {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "click-gateway test PostgreSQL CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let ca_path = self.dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();
        let (crt, pem) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).unwrap();
        give(&crt);
        give(&pem);
        self.ca = Some(ca_path);
        "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".to_owned()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_as_postgres(&self, tool: &str, args: &[&str]) {
        if let Err(e) = self.try_as_postgres(tool, args) {
            panic!("{e}");
        }
    }

    fn try_as_postgres(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{tool} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        ))
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run/log")).unwrap_or_default()
    }

    /// Starts the server (again, after [`PgCluster::stop`]) on the same port and data, and
    /// waits until it accepts connections (`pg_ctl -w`).
    pub fn start_again(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// The first start: on a port another test's listener took in the meantime (a free port
    /// is only free when it is looked at), again on another.
    fn start_first(&mut self) {
        for _ in 0..4 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if e.contains("Address already in use") => self.port = free_port(),
                Err(e) => panic!("{e}"),
            }
        }
        self.start_again();
    }

    fn try_start(&mut self) -> Result<(), String> {
        let run = self.dir.path().join("run");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=on {}",
            self.port,
            run.display(),
            self.options
        );
        let data = self.data();
        let log = run.join("log");
        self.try_as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server by its postmaster's pid (SIGINT: fast shutdown, sessions
    /// terminated) and waits until it is gone.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid_file = self.data().join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        else {
            return;
        };
        // SAFETY: kill(2) on the postmaster this cluster started.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + PATIENCE;
        // Gone: the pid file removed (the postmaster's last act) or no such process.
        // SAFETY: kill(pid, 0) only checks for existence.
        while pid_file.exists() && unsafe { libc::kill(pid, 0) } == 0 {
            if Instant::now() > deadline {
                // SAFETY: as above; the last resort.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The URL the gateway is given: the `gw` role with its password, the `ledger` database.
    pub fn url(&self) -> String {
        format!("postgres://gw:{PG_PASSWORD}@127.0.0.1:{}/ledger", self.port)
    }

    /// `url()` as shown: redacted.
    pub fn shown(&self) -> String {
        format!("postgres://gw@127.0.0.1:{}/ledger", self.port)
    }

    /// A superuser connection over the socket (trust), to look at or change things.
    pub async fn admin(&self) -> tokio_postgres::Client {
        self.connect("postgres", "postgres").await
    }

    /// A connection as `gw` to `ledger`, over the socket.
    pub async fn ledger_db(&self) -> tokio_postgres::Client {
        self.connect("gw", "ledger").await
    }

    async fn connect(&self, user: &str, db: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path().join("run"))
            .port(self.port)
            .user(user)
            .dbname(db);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `[ledger]` section naming `url`, with `extra` settings.
pub fn ledger_section(url: &str, extra: &str) -> String {
    format!("[ledger]\ndatabase = \"{url}\"\n{extra}\n")
}
