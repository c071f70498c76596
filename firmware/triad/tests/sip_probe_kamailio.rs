//! The PBX health probe against a real SIP server: Kamailio from Debian
//! (installed by `.ci/setup`), started on a loopback port with a minimal
//! config that answers OPTIONS. Alive, it answers our probe; killed (its
//! whole process group), the probe fails; a UDP port that is not SIP at all
//! times the probe out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use triad::sip_probe::{probe_udp, ProbeError};

const KAMAILIO: &str = "/usr/sbin/kamailio";
const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";

/// A free UDP port on loopback (bound and released: a small race only).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Kamailio {
    child: Child,
    dir: PathBuf,
}

impl Kamailio {
    fn start(port: u16) -> Kamailio {
        assert!(
            Path::new(KAMAILIO).exists(),
            "{KAMAILIO} is missing: this test needs Kamailio (apt-get install kamailio; .ci/setup installs it)"
        );
        let dir = std::env::temp_dir().join(format!("triad-kamailio-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(
            &cfg,
            format!(
                "#!KAMAILIO\n\
                 debug=1\nlog_stderror=yes\nchildren=1\n\
                 listen=udp:127.0.0.1:{port}\n\
                 mpath=\"{MODULES}\"\n\
                 loadmodule \"sl.so\"\n\
                 request_route {{\n\
                 \tif (method == \"OPTIONS\") {{ sl_send_reply(\"200\", \"Alive\"); exit; }}\n\
                 \tsl_send_reply(\"404\", \"Not here\");\n\
                 }}\n"
            ),
        )
        .unwrap();
        let child = Command::new(KAMAILIO)
            .args(["-f", cfg.to_str().unwrap(), "-DD", "-E", "-Y", dir.to_str().unwrap(), "-P"])
            .arg(dir.join("kamailio.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: killing only the main PID leaves its
            // workers answering (LAB-NOTES).
            .process_group(0)
            .spawn()
            .expect("start kamailio");
        Kamailio { child, dir }
    }

    /// SIGKILL of the whole process group, then reaped.
    fn kill(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: a plain syscall; the group is the one we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn kamailio_alive_answers_the_probe_and_killed_fails_it() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut k = Kamailio::start(port);
    let rt = runtime();
    // Kamailio answers about 15 ms after its start (LAB-NOTES); allow 5 s.
    let started = Instant::now();
    let code = loop {
        match rt.block_on(probe_udp(addr, Duration::from_millis(200))) {
            Ok(code) => break code,
            Err(_) if started.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("Kamailio never answered the probe in 5 s: {e}"),
        }
    };
    assert_eq!(code, 200);
    eprintln!("first answer {:?} after start", started.elapsed());
    // Every probe is its own transaction: ten in a row all answered.
    for _ in 0..10 {
        assert_eq!(rt.block_on(probe_udp(addr, Duration::from_millis(500))).unwrap(), 200);
    }
    k.kill();
    let err = rt.block_on(probe_udp(addr, Duration::from_millis(300))).unwrap_err();
    assert!(matches!(err, ProbeError::Io { .. } | ProbeError::Timeout { .. }), "{err}");
}

#[test]
fn a_port_that_is_not_sip_times_the_probe_out() {
    // Something listens, reads, and answers garbage: not an answer.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        if let Ok((_, from)) = silent.recv_from(&mut buf) {
            let _ = silent.send_to(b"HTTP/1.1 400 Bad Request\r\n\r\n", from);
        }
    });
    let err = runtime().block_on(probe_udp(addr, Duration::from_millis(300))).unwrap_err();
    assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    echo.join().unwrap();
}
