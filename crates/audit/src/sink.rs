//! Export of log lines beyond the file: stdout and syslog (RFC 5424 over a unix
//! datagram socket such as `/dev/log`), for a SIEM to ingest.
//!
//! Exports carry the same JSON lines as the file, hash chain and checkpoints included, so
//! a SIEM holding them can run the same verification.

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::time::Timestamp;

/// RFC 5424 facility `authpriv` (10): security and authorization messages.
const FACILITY_AUTHPRIV: u8 = 10;
/// RFC 5424 severity `warning`, for denials.
pub(crate) const SEVERITY_WARNING: u8 = 4;
/// RFC 5424 severity `informational`, for everything else.
pub(crate) const SEVERITY_INFO: u8 = 6;

/// Sends each line as one RFC 5424 message to a unix datagram socket.
pub(crate) struct Syslog {
    socket: UnixDatagram,
    path: PathBuf,
    hostname: String,
    pid: u32,
}

impl Syslog {
    pub(crate) fn new(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            // Unconnected: each send names the path, so a restarted syslog daemon (a new
            // socket at the same path) is picked up without reconnecting.
            socket: UnixDatagram::unbound()?,
            path: path.to_owned(),
            hostname: hostname(),
            pid: std::process::id(),
        })
    }

    /// `<PRI>1 TIMESTAMP HOSTNAME wimse PROCID MSGID - MSG` (RFC 5424 §6), with the JSON
    /// line as MSG (ASCII, so no BOM is needed) and no structured data.
    pub(crate) fn frame(&self, severity: u8, msgid: &str, line: &[u8]) -> Vec<u8> {
        let pri = u16::from(FACILITY_AUTHPRIV) * 8 + u16::from(severity);
        let mut frame = format!(
            "<{pri}>1 {} {} wimse {} {msgid} - ",
            Timestamp::now(),
            self.hostname,
            self.pid
        )
        .into_bytes();
        frame.extend_from_slice(line);
        frame
    }

    pub(crate) fn send(&self, severity: u8, msgid: &str, line: &[u8]) -> std::io::Result<()> {
        let frame = self.frame(severity, msgid, line);
        self.socket.send_to(&frame, &self.path).map(|_| ())
    }
}

/// The host name for the HOSTNAME field, or RFC 5424's nil value `-`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    // RFC 5424 §6.2.4: 1*255 PRINTUSASCII.
    if !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| (33..=126).contains(&b)) {
        name.to_owned()
    } else {
        "-".to_owned()
    }
}

/// Writes each line to the process's stdout.
pub(crate) fn write_stdout(line: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syslog_frame_is_rfc5424_with_authpriv_priority() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Syslog::new(&dir.path().join("log")).unwrap();
        let frame = String::from_utf8(sink.frame(SEVERITY_WARNING, "record", b"{}")).unwrap();
        // authpriv (10) * 8 + warning (4) = 84.
        assert!(frame.starts_with("<84>1 "), "{frame}");
        let fields: Vec<&str> = frame.splitn(8, ' ').collect();
        assert_eq!(fields.len(), 8, "{frame}");
        assert!(Timestamp::parse_rfc3339(fields[1]).is_ok());
        assert_eq!(fields[3], "wimse");
        assert_eq!(fields[5], "record");
        assert_eq!(fields[6], "-");
        assert_eq!(fields[7], "{}");
    }
}
