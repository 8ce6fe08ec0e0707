//! Test and benchmark support: a throwaway Postgres cluster.
//!
//! [`TempPostgres::start`] runs `initdb` and a `postgres` server on a fresh
//! temporary directory, listening only on a unix socket there (no TCP), as
//! the `postgres` user when running as root (initdb refuses root). The
//! server runs under a small watchdog shell whose stdin is a pipe from this
//! process: when the process exits, however it exits, the pipe closes and
//! the watchdog stops the server and deletes the directory. The same pipe
//! takes `stop` / `start` commands, for fault tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

pub struct TempPostgres {
    dir: PathBuf,
    control: Mutex<(Child, Option<ChildStdin>)>,
}

/// The directory holding `initdb` and `postgres`: `$KINBAR_PG_BIN`, the
/// newest `/usr/lib/postgresql/*/bin`, or whatever `PATH` has.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("KINBAR_PG_BIN") {
        let d = PathBuf::from(d);
        return d.join("postgres").exists().then_some(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd args…`, as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

const WATCHDOG: &str = r#"
bin=$1; data=$2; dir=$3
run() { "$bin/postgres" -D "$data" -k "$dir" -c listen_addresses= -c fsync=off \
  -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
  -c track_commit_timestamp=on >>"$dir/log" 2>&1 & pid=$!; }
run
while read cmd; do
  case "$cmd" in
    stop) kill -INT "$pid"; wait "$pid" ;;
    start) run ;;
  esac
done
kill -INT "$pid" 2>/dev/null; wait "$pid"
rm -rf "$dir"
"#;

/// Whether a Postgres-backed test should be skipped: true (with a notice
/// on stderr) when no server binaries are installed, so `cargo test` works
/// on a machine without Postgres. With `KINBAR_REQUIRE_POSTGRES` set (CI
/// sets it) a missing installation panics instead of skipping silently.
pub fn skip_postgres_tests() -> bool {
    if bin_dir().is_some() {
        return false;
    }
    let hint = "Postgres server binaries not found: install the `postgresql` package \
                (initdb and postgres) or set KINBAR_PG_BIN";
    if std::env::var_os("KINBAR_REQUIRE_POSTGRES").is_some() {
        #[allow(clippy::panic)] // test support: CI demands the Postgres tests run
        {
            panic!("KINBAR_REQUIRE_POSTGRES is set: {hint}");
        }
    }
    eprintln!("skipped: {hint}");
    true
}

impl TempPostgres {
    /// Creates and starts a cluster; fails with a readable reason (e.g.
    /// the Postgres binaries are not installed).
    pub fn start() -> Result<TempPostgres, String> {
        Self::create(|bin, data| {
            let mut c = as_postgres(&bin.join("initdb"));
            c.arg("-D").arg(data).args([
                "-A",
                "trust",
                "--no-sync",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ]);
            c
        })
    }

    /// Starts a streaming hot-standby replica of this cluster
    /// (`pg_basebackup -R`), on its own directory and socket.
    pub fn start_replica(&self) -> Result<TempPostgres, String> {
        let primary = self.dir.clone();
        Self::create(move |bin, data| {
            let mut c = as_postgres(&bin.join("pg_basebackup"));
            c.arg("-D").arg(data).arg("-h").arg(&primary).args([
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ]);
            c
        })
    }

    /// A temp directory owned by the server's user, filled by `init`
    /// (`bin`, `data dir`), then the server started under the watchdog.
    fn create(init: impl FnOnce(&Path, &Path) -> Command) -> Result<TempPostgres, String> {
        let bin = bin_dir().ok_or(
            "Postgres server binaries not found: install the `postgresql` package or set KINBAR_PG_BIN",
        )?;
        let dir = std::env::temp_dir().join(format!("kinbar-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err("cannot chown the cluster directory to the postgres user".into());
            }
        }
        let data = dir.join("data");
        let out = init(&bin, &data)
            .output()
            .map_err(|e| format!("initializing the cluster: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initializing the cluster failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut child = as_postgres(Path::new("/bin/sh"))
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(&bin)
            .arg(&data)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let stdin = child.stdin.take().ok_or("the watchdog has no stdin pipe")?;
        let pg = TempPostgres {
            dir,
            control: Mutex::new((child, Some(stdin))),
        };
        pg.wait_ready()?;
        Ok(pg)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(".s.PGSQL.5432")
    }

    fn wait_ready(&self) -> Result<(), String> {
        for _ in 0..300 {
            if self.socket().exists() && self.dir.join("data/postmaster.pid").exists() {
                // The socket appears slightly before connections are accepted.
                std::thread::sleep(Duration::from_millis(50));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        Err(format!("postgres did not start: {log}"))
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}",
            self.dir.display()
        )
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn fresh_database(&self) -> Result<String, String> {
        use sqlx::Connection as _;
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut last = String::new();
        for _ in 0..50 {
            match sqlx::PgConnection::connect(&self.url("postgres")).await {
                Ok(mut c) => {
                    // SQL-SAFE: `name` is `t_` and 16 random hex digits.
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .execute(&mut c)
                        .await
                        .map_err(|e| format!("CREATE DATABASE: {e}"))?;
                    let _ = c.close().await;
                    return Ok(self.url(&name));
                }
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(format!("cannot connect to the test cluster: {last}"))
    }

    /// The cluster's directory (its socket, log and `data/`), owned by the
    /// server's user: where a tool run by [`TempPostgres::run_tool`] may
    /// write.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs one of the cluster's programs (`pg_dump`, `pg_restore`,
    /// `pg_resetwal`…) as the server's user; its stderr on failure.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let bin = bin_dir().ok_or("Postgres binaries not found")?;
        let out = as_postgres(&bin.join(program))
            .args(args)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Moves the cluster's next transaction id past `newest` (an xid8) the
    /// way docs/OPERATIONS.md tells an operator after restoring a logical
    /// dump: stopped, `pg_resetwal -e EPOCH -x XID` with XID rounded up to
    /// the next pg_xact segment (0x100000 ids), started again.
    pub fn advance_transaction_ids_past(&self, newest: u64) -> Result<(), String> {
        let (epoch, xid) = next_transaction_id_after(newest);
        self.stop()?;
        let data = self.dir.join("data");
        let data = data.to_str().ok_or("non-UTF-8 data directory")?;
        self.run_tool(
            "pg_resetwal",
            &["-e", &epoch.to_string(), "-x", &xid.to_string(), "-D", data],
        )?;
        self.start_again()
    }

    fn command(&self, cmd: &str) -> Result<(), String> {
        let mut guard = self.control.lock().map_err(|_| "poisoned".to_string())?;
        let stdin = guard.1.as_mut().ok_or("the cluster is shutting down")?;
        writeln!(stdin, "{cmd}").map_err(|e| format!("watchdog: {e}"))?;
        stdin.flush().map_err(|e| format!("watchdog: {e}"))
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) -> Result<(), String> {
        self.command("stop")?;
        for _ in 0..500 {
            if !self.dir.join("data/postmaster.pid").exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("postgres did not stop".into())
    }

    /// Starts the server again after [`TempPostgres::stop`].
    pub fn start_again(&self) -> Result<(), String> {
        self.command("start")?;
        self.wait_ready()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.control.lock() {
            // Closing stdin (EOF) makes the watchdog stop and clean up.
            guard.1.take();
            let _ = guard.0.wait();
        }
    }
}

/// The `pg_resetwal -e EPOCH -x XID` that puts a cluster's next transaction
/// id past `newest` (an xid8): the next pg_xact segment boundary (a
/// multiple of 0x100000, as pg_resetwal's documentation advises), in the
/// next epoch when that overflows 32 bits.
pub fn next_transaction_id_after(newest: u64) -> (u64, u64) {
    let (epoch, xid) = (newest >> 32, newest & 0xFFFF_FFFF);
    let next = ((xid >> 20) + 1) << 20;
    if next > 0xFFFF_FFFF {
        // Ids 0-2 are special; the first normal id of the next epoch.
        (epoch + 1, 0x10_0000)
    } else {
        (epoch, next)
    }
}

#[cfg(test)]
mod tests {
    use super::next_transaction_id_after;

    #[test]
    fn the_next_transaction_id_is_the_next_segment_past_the_newest() {
        assert_eq!(next_transaction_id_after(5_123), (0, 0x10_0000));
        assert_eq!(next_transaction_id_after(0x10_0000), (0, 0x20_0000));
        assert_eq!(
            next_transaction_id_after((3 << 32) | 0x20_0001),
            (3, 0x30_0000)
        );
        // Past the last segment of an epoch: the next epoch.
        assert_eq!(next_transaction_id_after(0xFFF0_0001), (1, 0x10_0000));
    }
}
