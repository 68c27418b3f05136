//! Real services in containers, each with a client outside the container
//! that keeps one connection open across `cr checkpoint` (stopping the
//! container) and `cr restore`, sees no error, and checks the data before
//! and after: nginx serving a keep-alive HTTP/1.1 connection (master and
//! worker processes), a Python asyncio server (epoll, and an eventfd woken
//! by a thread), and PostgreSQL with an open transaction.
//!
//! The images are built from the host's own binaries (`cr image
//! build-minimal`, see `tests/common`); `scripts/setup` installs Debian's
//! nginx and postgresql for them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Waits until something accepts connections on `addr`.
#[track_caller]
fn wait_listening(h: &TestHost, name: &str, addr: SocketAddr, secs: u64) {
    assert!(
        wait_until(Duration::from_secs(secs), || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(500)
        )
        .is_ok()),
        "{name} does not accept connections on {addr}: {}",
        h.ok(&["logs", name])
    );
}

/// The command names of the container's processes, from its PID namespace.
fn process_names(h: &TestHost, name: &str) -> Vec<String> {
    let out = h.exec(name, &["sh", "-c", "cat /proc/[0-9]*/comm"]);
    let mut names: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    names.sort();
    names
}

#[track_caller]
fn checkpoint_and_restore(h: &TestHost, name: &str) {
    let t = Instant::now();
    h.ok(&["checkpoint", name]);
    assert_eq!(h.state(name), "stopped");
    h.ok(&["restore", name]);
    assert_eq!(h.state(name), "running");
    eprintln!("{name}: checkpoint + restore took {:?}", t.elapsed());
}

// ---------------------------------------------------------------- nginx

const NGINX_CONF: &str = r#"
daemon off;
master_process on;
worker_processes 2;
user nobody nogroup;
pid /tmp/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    keepalive_timeout 600s;
    keepalive_requests 10000;
    server {
        listen 80;
        root /srv/www;
    }
}
"#;

/// One HTTP/1.1 keep-alive connection.
struct Http {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let stream = connect(addr);
        Http {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// `GET path` on this connection: the body, after checking that the
    /// reply is a 200 and that the server keeps the connection open.
    #[track_caller]
    fn get(&mut self, path: &str) -> Vec<u8> {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending GET {path}: {e}"));
        let mut status = String::new();
        self.reader
            .read_line(&mut status)
            .unwrap_or_else(|e| panic!("reading the status of GET {path}: {e}"));
        assert!(status.starts_with("HTTP/1.1 200"), "GET {path}: {status:?}");
        let mut length = None;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("reading a header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once(':').expect("a header line");
            match key.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.trim().parse::<usize>().unwrap()),
                "connection" => assert!(
                    !value.trim().eq_ignore_ascii_case("close"),
                    "nginx closes the connection"
                ),
                _ => {}
            }
        }
        let mut body = vec![0; length.expect("a Content-Length header")];
        self.reader
            .read_exact(&mut body)
            .unwrap_or_else(|e| panic!("reading the body of GET {path}: {e}"));
        body
    }
}

#[test]
fn nginx_serves_the_same_keep_alive_connection_after_restore() {
    require(
        "nginx",
        Path::new("/usr/sbin/nginx").exists(),
        "scripts/setup installs Debian's nginx",
    );
    let h = TestHost::new();
    let script = format!(
        "cat > /etc/nginx-test.conf <<'EOF'\n{NGINX_CONF}\nEOF\n\
         mkdir -p /srv/www && head -c 200000 /dev/urandom > /srv/www/file && \
         echo hello > /srv/www/index.html && chmod -R a+rX /srv && \
         exec /usr/sbin/nginx -p /tmp -e stderr -c /etc/nginx-test.conf"
    );
    h.run(
        "web",
        TestImage::Nginx,
        Some(30),
        &[],
        &["/bin/sh", "-c", &script],
    );
    let addr: SocketAddr = format!("{}:80", h.net.addr(30)).parse().unwrap();
    wait_listening(&h, "web", addr, 20);
    let names = process_names(&h, "web");
    assert_eq!(
        names.iter().filter(|n| *n == "nginx").count(),
        3,
        "nginx master and two workers: {names:?}"
    );

    let mut client = Http::connect(addr);
    let local = client.stream.local_addr().unwrap();
    let before = client.get("/file");
    assert_eq!(before.len(), 200000);
    assert_eq!(client.get("/index.html"), b"hello\n");

    checkpoint_and_restore(&h, "web");

    // The same socket, opened before the checkpoint.
    assert_eq!(client.stream.local_addr().unwrap(), local);
    assert_eq!(client.get("/index.html"), b"hello\n");
    let after = client.get("/file");
    assert!(after == before, "the file served after the restore differs");
    for _ in 0..20 {
        assert_eq!(client.get("/index.html"), b"hello\n");
    }
    assert_eq!(process_names(&h, "web"), names);
    // A new connection is served too.
    assert!(Http::connect(addr).get("/file") == before);
}

// -------------------------------------------------------------- asyncio

/// A line server on asyncio's epoll loop; an eventfd registered with
/// `loop.add_reader` is written by a thread every 20 ms, and each reply
/// says how many wakeups the loop has read so far.
const ASYNCIO_SERVER: &str = r#"
import asyncio, os, threading, time
efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
wakes = 0
def on_wake():
    global wakes
    wakes += os.eventfd_read(efd)
def ticker():
    while True:
        os.eventfd_write(efd, 1)
        time.sleep(0.02)
async def handle(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        n = int(line.split()[1])
        writer.write(f"reply {n} {n * n} wakes {wakes}\n".encode())
        await writer.drain()
    writer.close()
async def main():
    loop = asyncio.get_running_loop()
    assert type(loop._selector).__name__ == "EpollSelector", loop._selector
    loop.add_reader(efd, on_wake)
    threading.Thread(target=ticker, daemon=True).start()
    server = await asyncio.start_server(handle, "0.0.0.0", 7100)
    open("/root/ready", "w").write("1")
    await server.serve_forever()
asyncio.run(main())
"#;

struct Lines {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Lines {
    /// Sends `line N`, checks the reply and returns the wakeup count in it.
    #[track_caller]
    fn exchange(&mut self, n: u64) -> u64 {
        self.stream
            .write_all(format!("line {n}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending line {n}: {e}"));
        let mut reply = String::new();
        self.reader
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("reading the reply to line {n}: {e}"));
        let words: Vec<&str> = reply.split_whitespace().collect();
        assert_eq!(
            &words[..4],
            &["reply", &n.to_string(), &(n * n).to_string(), "wakes"],
            "reply to line {n}: {reply:?}"
        );
        words[4].parse().unwrap()
    }
}

#[test]
fn an_asyncio_server_with_an_eventfd_keeps_its_tcp_client() {
    let h = TestHost::new();
    h.run(
        "aio",
        TestImage::Python,
        Some(31),
        &[],
        &["/usr/bin/python3", "-c", ASYNCIO_SERVER],
    );
    assert!(
        wait_until(Duration::from_secs(20), || h
            .cr(&["exec", "aio", "--", "test", "-e", "/root/ready"])
            .status
            .success()),
        "the asyncio server did not start: {}",
        h.ok(&["logs", "aio"])
    );
    let addr: SocketAddr = format!("{}:7100", h.net.addr(31)).parse().unwrap();
    let stream = connect(addr);
    let mut client = Lines {
        reader: BufReader::new(stream.try_clone().unwrap()),
        stream,
    };
    let mut wakes = 0;
    for n in 1..=50 {
        let w = client.exchange(n);
        assert!(w >= wakes, "the wakeup count went back");
        wakes = w;
    }
    // Let the thread wake the loop a few times: the count must move.
    std::thread::sleep(Duration::from_millis(200));
    let before = client.exchange(51);
    assert!(before > 0, "the eventfd never woke the loop");

    checkpoint_and_restore(&h, "aio");

    let mut last = client.exchange(52);
    assert!(last >= before, "wakeups lost: {last} < {before}");
    for n in 53..=100 {
        last = client.exchange(n);
    }
    std::thread::sleep(Duration::from_millis(300));
    let later = client.exchange(101);
    assert!(
        later > last,
        "the thread's eventfd no longer wakes the restored loop ({later} wakeups, {last} before)"
    );
}

// ----------------------------------------------------------- PostgreSQL

/// The frontend/backend protocol (version 3.0), as much of it as a
/// session of simple queries with trust authentication needs.
struct Pg {
    stream: TcpStream,
}

/// What a simple query returned: the rows (text format), the command
/// tags, and the transaction status of the ReadyForQuery that ended it.
#[derive(Debug)]
struct PgReply {
    rows: Vec<Vec<Option<String>>>,
    tags: Vec<String>,
    status: u8,
}

impl Pg {
    fn connect(addr: SocketAddr) -> Result<Pg, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut pg = Pg { stream };
        let mut body = 196608u32.to_be_bytes().to_vec();
        for s in ["user", "postgres", "database", "postgres"] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        pg.stream
            .write_all(&msg)
            .map_err(|e| format!("startup: {e}"))?;
        loop {
            let (kind, body) = pg.message()?;
            match kind {
                b'R' if body[..4] == [0, 0, 0, 0] => {}
                b'R' => return Err(format!("authentication asked: {body:?}")),
                b'S' | b'K' | b'N' => {}
                b'E' => return Err(format!("startup refused: {}", error_text(&body))),
                b'Z' => return Ok(pg),
                other => return Err(format!("unexpected message {:?}", other as char)),
            }
        }
    }

    fn message(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| format!("reading a message: {e}"))?;
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("reading a message body: {e}"))?;
        Ok((head[0], body))
    }

    /// One simple query; an ErrorResponse fails the test.
    #[track_caller]
    fn query(&mut self, sql: &str) -> PgReply {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream
            .write_all(&msg)
            .unwrap_or_else(|e| panic!("sending {sql:?}: {e}"));
        let mut reply = PgReply {
            rows: Vec::new(),
            tags: Vec::new(),
            status: 0,
        };
        let mut error = None;
        loop {
            let (kind, body) = self.message().unwrap_or_else(|e| panic!("{sql:?}: {e}"));
            match kind {
                b'T' | b'I' | b'N' | b'S' => {}
                b'D' => reply.rows.push(data_row(&body)),
                b'C' => reply
                    .tags
                    .push(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
                b'E' => error = Some(error_text(&body)),
                b'Z' => {
                    reply.status = body[0];
                    break;
                }
                other => panic!("{sql:?}: unexpected message {:?}", other as char),
            }
        }
        if let Some(e) = error {
            panic!("{sql:?} failed: {e}");
        }
        reply
    }

    /// The single value of a one-row, one-column query.
    #[track_caller]
    fn value(&mut self, sql: &str) -> String {
        let reply = self.query(sql);
        assert_eq!(reply.rows.len(), 1, "{sql:?}: {reply:?}");
        reply.rows[0][0].clone().expect("a value, not NULL")
    }
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            row.push(Some(
                String::from_utf8_lossy(&body[at..at + len]).into_owned(),
            ));
            at += len;
        }
    }
    row
}

/// The message fields (severity, code, text) of an ErrorResponse.
fn error_text(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty() && matches!(f[0], b'S' | b'C' | b'M'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// initdb in the container's own data directory as an unprivileged user,
/// then the server itself (PID 1 after `exec su`).
const POSTGRES_START: &str = r#"
echo 'postgres:x:999:999:PostgreSQL:/var/lib/pg:/bin/sh' >> /etc/passwd
echo 'postgres:x:999:' >> /etc/group
mkdir -p /var/lib/pg && chown 999:999 /var/lib/pg
exec su -s /bin/sh postgres -c '
  set -e
  /usr/lib/postgresql/15/bin/initdb -D /var/lib/pg/data -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/var/lib/pg/initdb.log 2>&1
  echo "host all all 0.0.0.0/0 trust" >> /var/lib/pg/data/pg_hba.conf
  exec /usr/lib/postgresql/15/bin/postgres -D /var/lib/pg/data \
    -c listen_addresses="*" -c unix_socket_directories=/tmp \
    -c shared_buffers=16MB -c huge_pages=off -c fsync=off
'
"#;

#[test]
fn postgres_keeps_a_session_with_an_open_transaction() {
    require(
        "postgresql 15",
        Path::new("/usr/lib/postgresql/15/bin/postgres").exists(),
        "scripts/setup installs Debian's postgresql",
    );
    let h = TestHost::new();
    h.run(
        "pg",
        TestImage::Postgres,
        Some(32),
        &[],
        &["/bin/sh", "-c", POSTGRES_START],
    );
    let addr: SocketAddr = format!("{}:5432", h.net.addr(32)).parse().unwrap();
    let mut session = None;
    let up = wait_until(Duration::from_secs(40), || {
        session = Pg::connect(addr).ok();
        session.is_some()
    });
    assert!(
        up,
        "postgres does not accept sessions: {}\n{}",
        h.ok(&["logs", "pg"]),
        String::from_utf8_lossy(
            &h.cr(&["exec", "pg", "--", "cat", "/var/lib/pg/initdb.log"])
                .stdout
        )
    );
    let mut pg = session.unwrap();
    pg.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.query("INSERT INTO t VALUES (1, 'committed')");
    assert_eq!(pg.query("BEGIN").status, b'T');
    pg.query("INSERT INTO t VALUES (2, 'uncommitted')");
    let xid = pg.value("SELECT txid_current()");
    let backend = pg.value("SELECT pg_backend_pid()");
    assert_eq!(pg.value("SELECT count(*) FROM t"), "2");
    // Another session does not see the open transaction's row.
    let mut other = Pg::connect(addr).unwrap();
    assert_eq!(other.value("SELECT count(*) FROM t"), "1");
    drop(other);

    checkpoint_and_restore(&h, "pg");

    // The same session, in the same transaction.
    assert_eq!(pg.value("SELECT txid_current()"), xid);
    assert_eq!(pg.value("SELECT pg_backend_pid()"), backend);
    assert_eq!(
        pg.value("SELECT v FROM t WHERE id = 2"),
        "uncommitted",
        "the open transaction's row"
    );
    pg.query("INSERT INTO t VALUES (3, 'after')");
    let commit = pg.query("COMMIT");
    assert_eq!(commit.tags, ["COMMIT"]);
    assert_eq!(commit.status, b'I');
    let mut fresh = Pg::connect(addr).expect("a new session after the restore");
    let rows = fresh.query("SELECT id, v FROM t ORDER BY id").rows;
    assert_eq!(
        rows,
        [
            [Some("1".to_string()), Some("committed".to_string())],
            [Some("2".to_string()), Some("uncommitted".to_string())],
            [Some("3".to_string()), Some("after".to_string())],
        ]
    );
}
