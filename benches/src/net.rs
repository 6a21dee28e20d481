//! The link between a benchmark (the "laptop") and its sshd (the "remote node").
//!
//! By default a [`Link`]: a network namespace made for the run, joined to the bench's namespace
//! by a veth pair with an address each in a free private /30, and a `tbf` qdisc at the given
//! rate on both ends (uploads and downloads are both shaped). sshd runs in the namespace (under
//! `ip netns exec`); the bench and the tools it measures stay where they are and reach it over
//! the veth, whose counters give the bytes each tool put on the wire, both directions. The
//! commands, as run (names and addresses random per run):
//!
//! ```text
//! ip netns add mtr-bench-<pid>-<hex>
//! ip link add mb<hex>h type veth peer name mb<hex>r netns mtr-bench-<pid>-<hex>
//! ip addr add 10.A.B.C+1/30 dev mb<hex>h; ip link set mb<hex>h up
//! ip -n mtr-bench-<pid>-<hex> addr add 10.A.B.C+2/30 dev mb<hex>r
//! ip -n mtr-bench-<pid>-<hex> link set mb<hex>r up; ip -n ... link set lo up
//! tc qdisc replace dev mb<hex>h root tbf rate 1gbit burst 256kb latency 100ms
//! tc -n mtr-bench-<pid>-<hex> qdisc replace dev mb<hex>r root tbf rate 1gbit burst 256kb latency 100ms
//! ```
//!
//! A 256 KB bucket lets one TCP stream reach ~945 Mbit/s of payload at `rate 1gbit` on a
//! 2-core VM (64 KB: ~920); `latency 100ms` bounds the queue. Dropping the [`Link`] deletes the
//! namespace (which takes the veth pair with it) even when the bench panics; a run killed by a
//! signal leaves them to the next run's [`sweep_stale`], which deletes those whose owner pid is
//! gone.
//!
//! When the namespace cannot be made (no root, no `ip`, no veth), [`Net::setup`] falls back to
//! loopback, unshaped, and says so loudly: in a private network namespace with only `lo` (its rx
//! counter counts each byte once) when `unshare` works, else on the host's loopback, where other
//! traffic adds up.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use testkit::sshd::{Builder, Server};

/// `tbf` parameters besides the rate (see the module doc).
pub const BURST: &str = "256kb";
pub const LATENCY: &str = "100ms";

const NS_PREFIX: &str = "mtr-bench-";

/// A network namespace joined to this one by a veth pair, optionally shaped with `tbf`.
pub struct Link {
    ns: String,
    host_if: String,
    remote_if: String,
    host_addr: Ipv4Addr,
    remote_addr: Ipv4Addr,
    rate: Option<String>,
    /// Every command that set the link up, for the report.
    commands: Vec<String>,
}

impl Link {
    /// Makes the namespace and the veth pair, shaped at `rate` (a `tc` rate such as `1gbit`;
    /// `None`: unshaped). On error, what was made is removed.
    pub fn create(rate: Option<&str>) -> Result<Link, String> {
        let hex = format!("{:08x}", random_u64() as u32);
        let (host_addr, remote_addr) = free_subnet()?;
        let mut link = Link {
            ns: format!("{NS_PREFIX}{}-{hex}", std::process::id()),
            host_if: format!("mb{hex}h"),
            remote_if: format!("mb{hex}r"),
            host_addr,
            remote_addr,
            rate: rate.map(str::to_owned),
            commands: Vec::new(),
        };
        // From here on, dropping `link` undoes whatever part was done.
        let (ns, h, r) = (
            link.ns.clone(),
            link.host_if.clone(),
            link.remote_if.clone(),
        );
        let host_cidr = format!("{host_addr}/30");
        let remote_cidr = format!("{remote_addr}/30");
        link.run(&["ip", "netns", "add", &ns])?;
        link.run(&[
            "ip", "link", "add", &h, "type", "veth", "peer", "name", &r, "netns", &ns,
        ])?;
        link.run(&["ip", "addr", "add", &host_cidr, "dev", &h])?;
        link.run(&["ip", "link", "set", &h, "up"])?;
        link.run(&["ip", "-n", &ns, "addr", "add", &remote_cidr, "dev", &r])?;
        link.run(&["ip", "-n", &ns, "link", "set", &r, "up"])?;
        link.run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        if let Some(rate) = rate {
            let tbf = [
                "root", "tbf", "rate", rate, "burst", BURST, "latency", LATENCY,
            ];
            link.run(&[&["tc", "qdisc", "replace", "dev", &h][..], &tbf].concat())?;
            link.run(&[&["tc", "-n", &ns, "qdisc", "replace", "dev", &r][..], &tbf].concat())?;
        }
        Ok(link)
    }

    fn run(&mut self, args: &[&str]) -> Result<(), String> {
        let line = args.join(" ");
        let out = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{line}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{line}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.commands.push(line);
        Ok(())
    }

    /// The address sshd listens on, inside the namespace.
    pub fn remote_addr(&self) -> Ipv4Addr {
        self.remote_addr
    }

    /// The address of this side of the veth.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The namespace's name.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The `tbf` rate, if shaped.
    pub fn rate(&self) -> Option<&str> {
        self.rate.as_deref()
    }

    /// The commands that set the link up.
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    /// Bytes that crossed the veth so far, both directions (its end on this side: rx + tx).
    pub fn wire_bytes(&self) -> u64 {
        let stat = |name: &str| -> u64 {
            let path = format!("/sys/class/net/{}/statistics/{name}", self.host_if);
            fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {path}: {e}"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        stat("rx_bytes") + stat("tx_bytes")
    }

    /// Sends `bytes` over one plain TCP connection to a listener inside the namespace (a thread
    /// of this process that joined it); returns the payload rate in bit/s.
    pub fn tcp_rate(&self, bytes: u64) -> Result<f64, String> {
        let ns = File::open(format!("/run/netns/{}", self.ns))
            .map_err(|e| format!("open /run/netns/{}: {e}", self.ns))?;
        let addr = self.remote_addr;
        let (port_tx, port_rx) = mpsc::channel();
        let receiver = thread::spawn(move || -> io::Result<u64> {
            // SAFETY: a valid namespace fd; setns moves this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let listener = TcpListener::bind((addr, 0))?;
            let _ = port_tx.send(listener.local_addr()?.port());
            let (mut stream, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            stream.write_all(b"k")?;
            Ok(total)
        });
        let Ok(port) = port_rx.recv() else {
            let err = receiver.join().expect("receiver thread");
            return Err(format!("listening in {}: {:?}", self.ns, err.err()));
        };
        let send = || -> io::Result<f64> {
            let mut stream = TcpStream::connect((addr, port))?;
            let buf = vec![0u8; 1 << 20];
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                stream.write_all(&buf[..n])?;
                sent += n as u64;
            }
            stream.shutdown(Shutdown::Write)?;
            stream.read_exact(&mut [0u8; 1])?;
            Ok(start.elapsed().as_secs_f64())
        };
        let secs = send().map_err(|e| format!("sending to {addr}:{port}: {e}"))?;
        match receiver.join().expect("receiver thread") {
            Ok(got) if got == bytes => Ok(bytes as f64 * 8.0 / secs),
            Ok(got) => Err(format!("sent {bytes} bytes, {got} arrived")),
            Err(e) => Err(format!("receiving in {}: {e}", self.ns)),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace destroys its end of the veth pair, and with it ours; the
        // second command covers a pair whose far end never made it into the namespace.
        for args in [
            &["ip", "netns", "del", &self.ns][..],
            &["ip", "link", "del", &self.host_if][..],
        ] {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes the namespaces (and so the veth pairs) left by bench runs that were killed before
/// their [`Link`] was dropped: those whose owner pid (in the name) no longer runs, after killing
/// what still runs inside (the orphaned sshd; testkit removes its account).
pub fn sweep_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting network namespace {name}, left by a bench run that was killed");
            // Its sshd (orphaned) would keep the namespace and the veth alive.
            let pids = Command::new("ip")
                .args(["netns", "pids", &name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: a plain syscall; the pid runs inside this stale bench namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A random /30 in 10.0.0.0/8 that overlaps no address or route of this namespace: the
/// addresses of its two hosts.
fn free_subnet() -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let mut used: Vec<(u32, u32)> = Vec::new();
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show"][..],
    ] {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(net) = parse_cidr(word) {
                used.push(net);
            }
        }
    }
    for _ in 0..100 {
        let base = u32::from_be_bytes([10, 0, 0, 0]) | (random_u64() as u32 & 0x00ff_fffc);
        let clash = used.iter().any(|&(net, prefix)| {
            let mask = u32::MAX.checked_shl(32 - prefix.min(30)).unwrap_or(0);
            base & mask == net & mask
        });
        if !clash {
            return Ok((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)));
        }
    }
    Err("no free /30 in 10.0.0.0/8 after 100 tries".into())
}

/// `a.b.c.d/n` or `a.b.c.d` (as /32) → (address, prefix length).
fn parse_cidr(word: &str) -> Option<(u32, u32)> {
    let (addr, prefix) = word.split_once('/').unwrap_or((word, "32"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((u32::from(addr), prefix))
}

/// Bits per second of a `tc` rate (`1gbit`, `100mbit`, `500kbit`, `2.5gbit`, `800bit`).
pub fn parse_rate(rate: &str) -> Option<f64> {
    let rate = rate.trim().to_ascii_lowercase();
    let digits = rate
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rate.len());
    let n: f64 = rate[..digits].parse().ok()?;
    let unit = match &rate[digits..] {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        _ => return None,
    };
    Some(n * unit)
}

/// Where the bench's sshd runs and how its traffic is counted.
pub enum Net {
    /// A namespace behind a veth pair (shaped, unless its rate is `None`).
    Link(Link),
    /// Loopback, unshaped: in a private namespace (`private`), or the host's. `why`: the reason.
    Loopback { private: bool, why: String },
}

/// How the bench wants its network (`MTR_BENCH_NET`; the rate from `--rate R` after `--` on
/// the bench's command line, else `MTR_BENCH_RATE`).
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// `netns` (default), `loopback` (a private namespace with only `lo`) or `shared` (the
    /// host's loopback).
    pub mode: String,
    /// A `tc` rate for the link (default `1gbit`), or `None` for an unshaped veth
    /// (`MTR_BENCH_RATE=unlimited`).
    pub rate: Option<String>,
}

impl NetOptions {
    pub fn from_env() -> NetOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let shared = var("MTR_BENCH_SHARED_NET").is_some_and(|v| v != "0");
        let mode = var("MTR_BENCH_NET")
            .unwrap_or_else(|| if shared { "shared" } else { "netns" }.to_owned());
        assert!(
            ["netns", "loopback", "shared"].contains(&mode.as_str()),
            "MTR_BENCH_NET={mode:?}: expected netns, loopback or shared"
        );
        let arg = crate::run::rate_arg(std::env::args().skip(1));
        let (source, rate) = match arg {
            Some(v) => ("--rate", Some(v)),
            None => ("MTR_BENCH_RATE", var("MTR_BENCH_RATE")),
        };
        let rate = match rate {
            None => Some("1gbit".to_owned()),
            Some(v) if ["unlimited", "none", "off"].contains(&v.as_str()) => None,
            Some(v) => {
                assert!(
                    parse_rate(&v).is_some(),
                    "{source} {v:?}: expected a tc rate such as 1gbit or 100mbit, or unlimited"
                );
                Some(v)
            }
        };
        NetOptions { mode, rate }
    }
}

impl Net {
    /// Sets the network up as asked, falling back to loopback (loudly) when the namespace
    /// cannot be made. Call it before starting threads: the loopback fallback moves the calling
    /// thread (and what it starts later) into a new namespace.
    pub fn setup(opts: &NetOptions) -> Net {
        let why = match opts.mode.as_str() {
            "netns" => {
                sweep_stale();
                match Link::create(opts.rate.as_deref()) {
                    Ok(link) => return Net::Link(link),
                    Err(e) => {
                        eprintln!(
                            "\n!!!!!!!! no network namespace with a veth pair ({e}): running on \
                             LOOPBACK, with NO rate limit: wall times are not those of a {} link \
                             !!!!!!!!\n",
                            opts.rate.as_deref().unwrap_or("real")
                        );
                        format!("netns/veth unavailable: {e}")
                    }
                }
            }
            "loopback" => "MTR_BENCH_NET=loopback".to_owned(),
            _ => "MTR_BENCH_NET=shared".to_owned(),
        };
        let private = opts.mode != "shared" && isolate_loopback();
        Net::Loopback { private, why }
    }

    /// A server builder placed on this network (in the namespace, listening on its address).
    pub fn server(&self) -> Builder {
        match self {
            Net::Link(link) => Server::builder()
                .listen(link.remote_addr().into())
                .command_prefix(["ip", "netns", "exec", link.ns()]),
            Net::Loopback { .. } => Server::builder(),
        }
    }

    /// Bytes on the wire so far (see [`Link::wire_bytes`]; on loopback, `lo`'s rx).
    pub fn wire_bytes(&self) -> u64 {
        match self {
            Net::Link(link) => link.wire_bytes(),
            Net::Loopback { .. } => loopback_rx_bytes(),
        }
    }

    /// The link's rate when shaped.
    pub fn rate(&self) -> Option<&str> {
        match self {
            Net::Link(link) => link.rate(),
            Net::Loopback { .. } => None,
        }
    }

    /// One line for a table header.
    pub fn describe(&self) -> String {
        match self {
            Net::Link(link) => match link.rate() {
                Some(rate) => format!(
                    "veth into netns {}, tbf rate {rate} burst {BURST} latency {LATENCY} on both \
                     ends",
                    link.ns()
                ),
                None => format!("veth into netns {}, NOT rate-limited", link.ns()),
            },
            Net::Loopback { private, why } => format!(
                "LOOPBACK ({}), NOT rate-limited: {why}",
                if *private {
                    "private namespace"
                } else {
                    "shared with the host"
                }
            ),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Net::Link(link) => serde_json::json!({
                "mode": "netns-veth",
                "addresses": [link.host_addr().to_string(), link.remote_addr().to_string()],
                "tbf": link.rate().is_some(),
                "rate": link.rate(),
                "burst": BURST,
                "latency": LATENCY,
                "commands": link.commands(),
            }),
            Net::Loopback { private, why } => serde_json::json!({
                "mode": if *private { "loopback-private-netns" } else { "loopback-shared" },
                "tbf": false,
                "rate": null,
                "why": why,
            }),
        }
    }
}

/// The achieved rates of the link, measured at the start of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    /// Plain TCP payload, bit/s (`None` on loopback, or on failure).
    pub tcp: Option<f64>,
    /// `ssh host head -c N /dev/zero` into this process, bit/s (OpenSSH's default cipher).
    pub ssh: Option<f64>,
    pub bytes: u64,
}

impl Rates {
    /// Measures both, sending what the link carries in ~4 s at its rate (1 GB when unshaped)
    /// each way; `ssh` is the OpenSSH client set up for the bench's server (no remote command
    /// yet). Failures are printed, not fatal.
    pub fn measure(net: &Net, ssh: std::process::Command) -> Rates {
        let bytes = net.rate().and_then(parse_rate).map_or(1 << 30, |bits| {
            ((bits / 8.0 * 4.0) as u64).clamp(1 << 20, 1 << 30)
        });
        let mut rates = Rates {
            bytes,
            ..Rates::default()
        };
        if let Net::Link(link) = net {
            match link.tcp_rate(bytes) {
                Ok(r) => rates.tcp = Some(r),
                Err(e) => eprintln!("warning: measuring the link over TCP: {e}"),
            }
        }
        match ssh_rate(ssh, bytes) {
            Ok(r) => rates.ssh = Some(r),
            Err(e) => eprintln!("warning: measuring the link over ssh: {e}"),
        }
        rates
    }

    /// `TCP 945 Mbit/s, ssh 610 Mbit/s (500 MB each)`.
    pub fn describe(&self) -> String {
        let mbit = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.0} Mbit/s", r / 1e6));
        format!(
            "measured: TCP {}, ssh {} ({:.0} MB each)",
            mbit(self.tcp),
            mbit(self.ssh),
            self.bytes as f64 / 1e6
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes": self.bytes,
            "tcp_bit_per_s": self.tcp,
            "ssh_bit_per_s": self.ssh,
        })
    }
}

/// Runs `ssh ... 'head -c BYTES /dev/zero'` and reads its stdout; returns the rate in bit/s.
fn ssh_rate(mut ssh: std::process::Command, bytes: u64) -> Result<f64, String> {
    ssh.arg(format!("head -c {bytes} /dev/zero"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = ssh.spawn().map_err(|e| format!("ssh: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => return Err(format!("reading ssh's stdout: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let output = child.wait_with_output().map_err(|e| format!("ssh: {e}"))?;
    if !output.status.success() || got != bytes {
        return Err(format!(
            "ssh: {} after {got} of {bytes} bytes: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(bytes as f64 * 8.0 / secs)
}

/// Bytes received on `lo` so far (`/proc/net/dev`, this thread's network namespace).
/// Loopback counts each byte sent once in `rx` (and once in `tx`): rx alone is the traffic.
pub fn loopback_rx_bytes() -> u64 {
    let text = fs::read_to_string("/proc/net/dev").expect("read /proc/net/dev");
    text.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == "lo").then(|| rest.split_whitespace().next()?.parse().ok())?
        })
        .expect("no lo line in /proc/net/dev")
}

/// Moves this thread into a network namespace of its own with only `lo` up, so that its
/// counters see the benchmark's traffic alone. Returns false (and says why) if it cannot.
fn isolate_loopback() -> bool {
    // SAFETY: plain syscalls on locals.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            eprintln!(
                "warning: unshare(CLONE_NEWNET): {}; counting bytes on the shared loopback, \
                 where other traffic adds up",
                io::Error::last_os_error()
            );
            return false;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req);
        assert!(r == 0, "bringing lo up: {}", io::Error::last_os_error());
        libc::close(fd);
    }
    true
}

/// A random u64 from std's randomly seeded hasher (no `rand` crate).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()) ^ u128::from(std::process::id()));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_subnets_parse() {
        assert_eq!(parse_rate("1gbit"), Some(1e9));
        assert_eq!(parse_rate("100mbit"), Some(1e8));
        assert_eq!(parse_rate("2.5Gbit"), Some(2.5e9));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("1gbps"), None);
        assert_eq!(parse_cidr("192.0.2.0/24"), Some((0xc000_0200, 24)));
        assert_eq!(parse_cidr("10.1.2.3"), Some((0x0a01_0203, 32)));
        assert_eq!(parse_cidr("default"), None);
    }
}
