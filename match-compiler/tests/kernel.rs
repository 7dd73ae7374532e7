//! Compiled filters attached to real AF_UNIX datagram sockets: the kernel must take exactly
//! the frames the interpreter accepts, and programs for 1,000 rules must attach.

use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use busd_match::bpf::{compile, Program};
use busd_match::header::{encode, Fields, HEADER_LEN};
use busd_match::{interp, Arg, MatchRule};

fn attach(sock: &UnixDatagram, prog: &Program) -> std::io::Result<()> {
    busd_match::bpf::attach(std::os::fd::AsFd::as_fd(sock), prog)
}

fn abstract_name(tag: &str) -> String {
    format!("busd-match-test-{}-{tag}", std::process::id())
}

fn receiver(tag: &str) -> (UnixDatagram, SocketAddr) {
    let name = abstract_name(tag);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_nonblocking(true).unwrap();
    (sock, addr)
}

/// Sends `frame` to every abstract socket name with one sendmmsg; returns how many were sent.
fn send_to_all(sender: &UnixDatagram, frame: &[u8], names: &[String]) -> usize {
    let mut addrs: Vec<(libc::sockaddr_un, libc::socklen_t)> = names
        .iter()
        .map(|name| {
            // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
            let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            a.sun_family = libc::AF_UNIX as libc::sa_family_t;
            // Abstract names start with a NUL byte.
            for (dst, src) in a.sun_path[1..].iter_mut().zip(name.bytes()) {
                *dst = src as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
            (a, len as libc::socklen_t)
        })
        .collect();
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = addrs
        .iter_mut()
        .map(|(a, len)| {
            // SAFETY: msghdr/mmsghdr are plain data; all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (a as *mut libc::sockaddr_un).cast();
            m.msg_hdr.msg_namelen = *len;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every mmsghdr points at a live sockaddr_un and at the one iovec, which points
    // at `frame`; all outlive the call.
    let sent = unsafe {
        libc::sendmmsg(
            sender.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    };
    assert!(sent >= 0, "{}", std::io::Error::last_os_error());
    sent as usize
}

fn resolver(name: &str) -> Option<u32> {
    name.strip_prefix(":1.")?.parse().ok()
}

fn frame(msg_type: u8, sender: u32, destination: u32, member: &str, args: &[Arg<'_>]) -> Vec<u8> {
    let mut buf = [0u8; HEADER_LEN];
    let fields = Fields {
        msg_type,
        flags: 0,
        sender,
        destination,
        interface: Some("org.example.Iface"),
        member: Some(member),
        path: Some("/org/example/obj"),
    };
    encode(&fields, args, &mut buf);
    let mut f = buf.to_vec();
    f.extend_from_slice(b"the D-Bus message would follow");
    f
}

#[test]
fn the_kernel_takes_exactly_what_the_interpreter_accepts() {
    let member_rules: [(u32, &[&str]); 4] = [
        (1, &["member='A'"]),
        (2, &["member='B',arg0='x'"]),
        (3, &["path_namespace='/org/example'"]),
        (4, &[]),
    ];
    let members: Vec<(u32, UnixDatagram, SocketAddr, Program)> = member_rules
        .iter()
        .map(|(id, texts)| {
            let rules: Vec<MatchRule> =
                texts.iter().map(|t| MatchRule::parse(t).unwrap()).collect();
            let prog = compile(*id, &rules, &resolver);
            let (sock, addr) = receiver(&id.to_string());
            attach(&sock, &prog).unwrap();
            (*id, sock, addr, prog)
        })
        .collect();
    let frames = [
        frame(4, 9, 0, "A", &[]),
        frame(4, 9, 0, "B", &[Arg::Str("x")]),
        frame(4, 9, 0, "B", &[Arg::Str("y")]),
        frame(1, 9, 4, "Call", &[]),
        frame(1, 9, 2, "A", &[]),
    ];
    let sender = UnixDatagram::unbound().unwrap();
    let names: Vec<String> = members
        .iter()
        .map(|(id, ..)| abstract_name(&id.to_string()))
        .collect();
    let mut buf = [0u8; 4096];
    for (n, f) in frames.iter().enumerate() {
        // One sendmmsg to every member, as a fast-path sender fans out; the kernel runs each
        // receiver's filter inside the call.
        assert_eq!(send_to_all(&sender, f, &names), names.len());
        for (id, sock, _, prog) in &members {
            let expected = interp::run(&prog.insns, f).unwrap() != 0;
            let got = sock.recv(&mut buf).is_ok();
            assert_eq!(got, expected, "frame {n} to member {id}");
        }
    }
    // Member 3's namespace rule takes every frame on /org/example; member 4 only its call.
    assert!(interp::run(&members[3].3.insns, &frames[3]).unwrap() != 0);
    assert!(interp::run(&members[3].3.insns, &frames[0]).unwrap() == 0);
}

#[test]
fn a_thousand_rules_attach_and_filter() {
    let texts: Vec<String> = (0..1000)
        .map(|i| format!("type='signal',interface='org.example.Iface',member='M{i}'"))
        .collect();
    let rules: Vec<MatchRule> = texts.iter().map(|t| MatchRule::parse(t).unwrap()).collect();
    let prog = compile(1, &rules, &resolver);
    assert!(!prog.widened, "{} instructions", prog.insns.len());
    let (sock, addr) = receiver("thousand");
    attach(&sock, &prog).expect("the kernel accepts the program");
    let sender = UnixDatagram::unbound().unwrap();
    let mut buf = [0u8; 4096];
    sender
        .send_to_addr(&frame(4, 9, 0, "M999", &[]), &addr)
        .unwrap();
    assert!(sock.recv(&mut buf).is_ok());
    sender
        .send_to_addr(&frame(4, 9, 0, "M1000", &[]), &addr)
        .unwrap();
    assert!(sock.recv(&mut buf).is_err(), "filtered out by the kernel");
}
