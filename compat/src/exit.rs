//! rsync's exit codes (rsync(1), "EXIT VALUES"), with their meanings.

/// An rsync exit code. The numbers are rsync's own; the names follow its
/// `errcode.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    /// Syntax or usage error.
    Syntax = 1,
    /// Protocol incompatibility.
    Protocol = 2,
    /// Errors selecting input/output files or dirs.
    FileSelect = 3,
    /// Requested action not supported.
    Unsupported = 4,
    /// Error starting client-server protocol.
    StartClient = 5,
    /// Error in socket I/O.
    SocketIo = 10,
    /// Error in file I/O.
    FileIo = 11,
    /// Error in rsync protocol data stream.
    StreamIo = 12,
    /// Errors with program diagnostics.
    MessageIo = 13,
    /// Error in IPC code.
    Ipc = 14,
    /// Received SIGUSR1 or SIGINT.
    Signal = 20,
    /// Some error returned by waitpid().
    WaitChild = 21,
    /// Error allocating core memory buffers.
    Malloc = 22,
    /// Partial transfer due to error.
    Partial = 23,
    /// Partial transfer due to vanished source files.
    Vanished = 24,
    /// The --max-delete limit stopped deletions.
    DelLimit = 25,
    /// Timeout in data send/receive.
    Timeout = 30,
    /// Timeout waiting for daemon connection.
    ConTimeout = 35,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// rsync's own words for the code, as it prints them after "rsync error:".
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Ok => "success",
            ExitCode::Syntax => "syntax or usage error",
            ExitCode::Protocol => "protocol incompatibility",
            ExitCode::FileSelect => "errors selecting input/output files, dirs",
            ExitCode::Unsupported => "requested action not supported",
            ExitCode::StartClient => "error starting client-server protocol",
            ExitCode::SocketIo => "error in socket IO",
            ExitCode::FileIo => "error in file IO",
            ExitCode::StreamIo => "error in rsync protocol data stream",
            ExitCode::MessageIo => "errors with program diagnostics",
            ExitCode::Ipc => "error in IPC code",
            ExitCode::Signal => "received SIGINT, SIGTERM, or SIGHUP",
            ExitCode::WaitChild => "some error returned by waitpid()",
            ExitCode::Malloc => "error allocating core memory buffers",
            ExitCode::Partial => "some files/attrs were not transferred (see previous errors)",
            ExitCode::Vanished => "some files vanished before they could be transferred",
            ExitCode::DelLimit => "the --max-delete limit stopped deletions",
            ExitCode::Timeout => "timeout in data send/receive",
            ExitCode::ConTimeout => "timeout waiting for daemon connection",
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_rsyncs() {
        let table = [
            (ExitCode::Syntax, 1),
            (ExitCode::Unsupported, 4),
            (ExitCode::StartClient, 5),
            (ExitCode::FileIo, 11),
            (ExitCode::StreamIo, 12),
            (ExitCode::Partial, 23),
            (ExitCode::Vanished, 24),
            (ExitCode::DelLimit, 25),
            (ExitCode::Timeout, 30),
        ];
        for (code, n) in table {
            assert_eq!(code.code(), n, "{code:?}");
        }
    }
}
