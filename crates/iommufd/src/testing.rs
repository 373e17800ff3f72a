//! Fuzz and test helpers (feature `test-utils`).

use crate::uapi::{Cmd, Ucmd, MAX_CMD_SIZE};
use crate::Errno;

/// Decodes any bytes as any command and checks the result against the
/// kernel's rules stated independently of [`Ucmd::decode`]: the first
/// two bytes of `data` pick the command (or an ioctl number that is
/// none), the rest is the caller's memory.
///
/// # Panics
/// When the decoder's answer differs from the rules, or it panics.
pub fn decode_any(data: &[u8]) {
    let (pick, arg) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return,
    };
    // Mostly real commands; otherwise any number in the iommufd range or beyond.
    let ioctl = if pick & 0x8000 == 0 {
        Cmd::ALL[usize::from(pick) % Cmd::ALL.len()].ioctl()
    } else {
        u32::from(pick & 0x7fff) | (u32::from(pick & 0xff) << 16)
    };
    let got = Ucmd::decode(ioctl, arg);
    let nr = ioctl & 0xff;
    if !(0x80..=0xa0).contains(&nr) {
        assert_eq!(got.err(), Some(Errno::ENOTTY), "{ioctl:#x} is out of range");
        return;
    }
    let Some(head) = arg.get(..4) else {
        assert_eq!(got.err(), Some(Errno::EFAULT));
        return;
    };
    let Some(cmd) = Cmd::from_ioctl(ioctl) else {
        assert_eq!(got.err(), Some(Errno::ENOTTY), "{ioctl:#x} is no command");
        return;
    };
    let user_size = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
    // The bytes past the kernel's structure are checked a page at a time
    // (a fault in a page is EFAULT even after a non-zero byte in it), then
    // the structure itself is read.
    let tail = || -> Result<(), Errno> {
        let mut at = cmd.size();
        while at < user_size {
            let end = (at + 4096).min(user_size);
            let chunk = arg.get(at..end).ok_or(Errno::EFAULT)?;
            if chunk.iter().any(|&b| b != 0) {
                return Err(Errno::E2BIG);
            }
            at = end;
        }
        arg.get(..user_size.min(cmd.size())).ok_or(Errno::EFAULT)?;
        Ok(())
    };
    let want = if user_size < cmd.min_size() {
        Err(Errno::EINVAL)
    } else {
        tail()
    };
    match (got, want) {
        (Ok(u), Ok(())) => {
            let n = user_size.min(cmd.size());
            assert_eq!(u.cmd(), cmd);
            assert_eq!(u.bytes().len(), cmd.size());
            assert_eq!(&u.bytes()[..n], &arg[..n], "the caller's bytes, as given");
            assert!(u.bytes()[n..].iter().all(|&b| b == 0), "the rest zero");
            assert!(cmd.size() <= MAX_CMD_SIZE);
            // A reply goes back no longer than the caller's structure.
            let mut out = vec![0xa5u8; user_size + 8];
            u.respond(u.bytes(), &mut out).expect("room for the reply");
            assert!(
                out[n..].iter().all(|&b| b == 0xa5),
                "nothing past the caller's size"
            );
        }
        (got, want) => assert_eq!(got.map(|_| ()), want, "{} of {user_size} bytes", cmd.name()),
    }
}
