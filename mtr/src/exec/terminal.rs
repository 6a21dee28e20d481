//! The local terminal during an interactive run: raw mode that is always undone (a guard for
//! normal returns and errors, a panic hook for panics, and the signal pipe below so SIGTERM,
//! SIGHUP, SIGINT and SIGQUIT end the run through the same path), the window size, the tty
//! modes copied to the remote PTY the way `ssh` does, and signals delivered as bytes on a pipe
//! that the pump polls next to the SSH socket (no work in signal handlers).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use rustix::termios::{
    self, InputModes, LocalModes, OptionalActions, OutputModes, SpecialCodeIndex, Termios,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
use signal_hook::SigId;
use ssh2::{PtyModeOpcode, PtyModes};

/// The modes to put back, for the panic hook (the [`RawMode`] guard holds its own copy).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// The size of a terminal: cells and, when the terminal reports them, pixels (else 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub cols: u32,
    pub rows: u32,
    pub width_px: u32,
    pub height_px: u32,
}

/// The local window size, asked of stdout then stdin; 80x24 when neither is a terminal.
pub fn size() -> Size {
    let ws = termios::tcgetwinsize(io::stdout().as_fd())
        .or_else(|_| termios::tcgetwinsize(io::stdin().as_fd()))
        .ok()
        .filter(|ws| ws.ws_col > 0 && ws.ws_row > 0);
    match ws {
        Some(ws) => Size {
            cols: ws.ws_col.into(),
            rows: ws.ws_row.into(),
            width_px: ws.ws_xpixel.into(),
            height_px: ws.ws_ypixel.into(),
        },
        None => Size {
            cols: 80,
            rows: 24,
            width_px: 0,
            height_px: 0,
        },
    }
}

/// The local `TERM`, for the remote PTY (`xterm-256color` when unset or empty).
pub fn term() -> String {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm-256color".into())
}

/// The modes of the terminal on stdin, when it is one.
pub fn current_modes() -> Option<Termios> {
    termios::tcgetattr(io::stdin().as_fd()).ok()
}

/// The local terminal's special characters and line-discipline flags, encoded for the PTY
/// request, so the remote PTY erases, interrupts and translates as the local one did (what
/// `ssh` sends). Without a local terminal, the server's defaults apply.
pub fn pty_modes(local: Option<&Termios>) -> PtyModes {
    let mut modes = PtyModes::new();
    let Some(t) = local else {
        return modes;
    };
    let chars = [
        (PtyModeOpcode::VINTR, SpecialCodeIndex::VINTR),
        (PtyModeOpcode::VQUIT, SpecialCodeIndex::VQUIT),
        (PtyModeOpcode::VERASE, SpecialCodeIndex::VERASE),
        (PtyModeOpcode::VKILL, SpecialCodeIndex::VKILL),
        (PtyModeOpcode::VEOF, SpecialCodeIndex::VEOF),
        (PtyModeOpcode::VSTART, SpecialCodeIndex::VSTART),
        (PtyModeOpcode::VSTOP, SpecialCodeIndex::VSTOP),
        (PtyModeOpcode::VSUSP, SpecialCodeIndex::VSUSP),
        (PtyModeOpcode::VREPRINT, SpecialCodeIndex::VREPRINT),
        (PtyModeOpcode::VWERASE, SpecialCodeIndex::VWERASE),
        (PtyModeOpcode::VLNEXT, SpecialCodeIndex::VLNEXT),
        (PtyModeOpcode::VDISCARD, SpecialCodeIndex::VDISCARD),
    ];
    for (op, idx) in chars {
        // 0 is _POSIX_VDISABLE on Linux; SSH says "disabled" with 255.
        let c = t.special_codes[idx];
        modes.set_character(op, (c != 0).then_some(char::from(c)));
    }
    let i = t.input_modes;
    let l = t.local_modes;
    let o = t.output_modes;
    let flags = [
        (PtyModeOpcode::ICRNL, i.contains(InputModes::ICRNL)),
        (PtyModeOpcode::IXON, i.contains(InputModes::IXON)),
        (PtyModeOpcode::IXANY, i.contains(InputModes::IXANY)),
        (PtyModeOpcode::IMAXBEL, i.contains(InputModes::IMAXBEL)),
        (PtyModeOpcode::ISIG, l.contains(LocalModes::ISIG)),
        (PtyModeOpcode::ICANON, l.contains(LocalModes::ICANON)),
        (PtyModeOpcode::ECHO, l.contains(LocalModes::ECHO)),
        (PtyModeOpcode::ECHOE, l.contains(LocalModes::ECHOE)),
        (PtyModeOpcode::ECHOK, l.contains(LocalModes::ECHOK)),
        (PtyModeOpcode::ECHOCTL, l.contains(LocalModes::ECHOCTL)),
        (PtyModeOpcode::ECHOKE, l.contains(LocalModes::ECHOKE)),
        (PtyModeOpcode::IEXTEN, l.contains(LocalModes::IEXTEN)),
        (PtyModeOpcode::OPOST, o.contains(OutputModes::OPOST)),
        (PtyModeOpcode::ONLCR, o.contains(OutputModes::ONLCR)),
    ];
    for (op, on) in flags {
        modes.set_boolean(op, on);
    }
    // IUTF8 (RFC 8160) has no name in ssh2's enum.
    modes.set_boolean(42u8, i.contains(InputModes::IUTF8));
    modes
}

/// The terminal on stdin in raw mode; dropping it restores the modes it found. While it
/// lives, a panic restores them too, before the panic message is printed.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode (`cfmakeraw`). `None` when stdin is not a terminal
    /// (`--tty` with piped input): nothing to change or restore.
    pub fn enter() -> io::Result<Option<RawMode>> {
        let Some(saved) = current_modes() else {
            return Ok(None);
        };
        install_panic_hook();
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved.clone());
        let mut raw = saved.clone();
        raw.make_raw();
        if let Err(e) = termios::tcsetattr(io::stdin().as_fd(), OptionalActions::Drain, &raw) {
            SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(e.into());
        }
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
        restore(&self.saved);
    }
}

fn restore(saved: &Termios) {
    if let Err(e) = termios::tcsetattr(io::stdin().as_fd(), OptionalActions::Drain, saved) {
        log::debug!("cannot restore the terminal modes: {e}");
    }
}

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: a panic while the lock is held must not deadlock the hook.
            if let Ok(mut saved) = SAVED.try_lock() {
                if let Some(t) = saved.take() {
                    restore(&t);
                }
            }
            previous(info);
        }));
    });
}

/// What the signals asked for since the last [`Signals::take`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The window changed size (SIGWINCH).
    pub resized: bool,
    /// A signal that ends mtr arrived (SIGTERM, SIGHUP, SIGINT, SIGQUIT): its number.
    pub terminate: Option<i32>,
}

/// SIGWINCH and the terminating signals, caught while an interactive run lasts: the handlers
/// set flags and write a byte to a socket pair whose read end the pump polls. Raw mode turns
/// Ctrl+C into a plain byte, so SIGINT here only comes from `kill`.
pub struct Signals {
    wake: UnixStream,
    resized: Arc<AtomicBool>,
    terminate: Arc<AtomicUsize>,
    ids: Vec<SigId>,
}

impl Signals {
    pub fn register() -> io::Result<Signals> {
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let resized = Arc::new(AtomicBool::new(false));
        let terminate = Arc::new(AtomicUsize::new(0));
        let mut signals = Signals {
            wake,
            resized: resized.clone(),
            terminate: terminate.clone(),
            ids: Vec::new(),
        };
        // Flags first: the handlers run in registration order, so a wakeup always finds its
        // flag set.
        signals
            .ids
            .push(signal_hook::flag::register(SIGWINCH, resized)?);
        for sig in [SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
            signals.ids.push(signal_hook::flag::register_usize(
                sig,
                terminate.clone(),
                sig as usize,
            )?);
        }
        for sig in [SIGWINCH, SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
            let notify = notify.try_clone()?;
            signals
                .ids
                .push(signal_hook::low_level::pipe::register(sig, notify)?);
        }
        Ok(signals)
    }

    /// The descriptor that becomes readable when a signal arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Drains the wakeup bytes and reports what arrived.
    pub fn take(&self) -> Pending {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
        let sig = self.terminate.load(Ordering::SeqCst);
        Pending {
            resized: self.resized.swap(false, Ordering::SeqCst),
            terminate: (sig != 0).then_some(sig as i32),
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
