//! The requests to stop that come as signals: SIGTERM and SIGINT on Unix; Ctrl+C and Ctrl+Break
//! in a Windows console. Windows has no SIGTERM: `ondevice daemon stop` (and a service manager)
//! stop the daemon through its control pipe, and the supervisor ends engine workers through their
//! Job Object.

#[cfg(unix)]
mod imp {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    /// The installed handlers.
    pub struct StopSignals {
        term: Signal,
        int: Signal,
    }

    impl StopSignals {
        /// Installs the handlers (inside a tokio runtime).
        pub fn install() -> std::io::Result<StopSignals> {
            Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }

        /// Waits for the next stop signal and returns its name.
        pub async fn recv(&mut self) -> &'static str {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
    }
}

#[cfg(windows)]
mod imp {
    use tokio::signal::windows::{CtrlBreak, CtrlC, ctrl_break, ctrl_c};

    /// The installed handlers.
    pub struct StopSignals {
        ctrl_c: CtrlC,
        ctrl_break: CtrlBreak,
    }

    impl StopSignals {
        /// Installs the handlers (inside a tokio runtime).
        pub fn install() -> std::io::Result<StopSignals> {
            Ok(StopSignals { ctrl_c: ctrl_c()?, ctrl_break: ctrl_break()? })
        }

        /// Waits for the next stop signal and returns its name.
        pub async fn recv(&mut self) -> &'static str {
            tokio::select! {
                _ = self.ctrl_c.recv() => "Ctrl+C",
                _ = self.ctrl_break.recv() => "Ctrl+Break",
            }
        }
    }
}

pub use imp::StopSignals;
