//! Workload attestation: who is on the other end of a Workload API connection.
//!
//! The kernel tells the agent the peer's pid, uid and gid (`SO_PEERCRED`, read by tokio
//! when the connection is accepted); everything else comes from `/proc/<pid>`: the
//! supplementary groups, the executable (through `/proc/<pid>/exe`, so the file hashed is
//! the one the process runs even if its path was replaced since) and the container ID in
//! its cgroup. The result is a set of selectors, `unix:uid:1000`, `unix:path:/usr/bin/x`,
//! `unix:sha256:<hex>`..., matched against registration entries.
//!
//! A pid can exit and be reused while it is being read. The process start time
//! (`/proc/<pid>/stat` field 22) is read before and after; if it changed, attestation
//! fails rather than describe another process.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the kernel says about the peer of a unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process ID.
    pub pid: i32,
    /// Effective user ID.
    pub uid: u32,
    /// Effective group ID.
    pub gid: u32,
}

/// Why a workload could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The connection carries no peer credentials (not a unix socket, or no pid).
    #[error("the caller's process is unknown")]
    NoPeer,
    /// `/proc/<pid>` could not be read (the process exited, or the agent lacks access).
    #[error("cannot read /proc/{pid}: {source}")]
    Proc {
        /// The pid.
        pid: i32,
        /// The cause.
        source: std::io::Error,
    },
    /// The pid now names another process.
    #[error("process {pid} exited while being attested")]
    PidReused {
        /// The pid.
        pid: i32,
    },
}

/// The selectors of a workload, sorted, each `type:value`.
pub type Selectors = BTreeSet<String>;

/// Attests processes, remembering executable hashes by file identity so that a binary is
/// hashed once, not on every call.
#[derive(Debug)]
pub struct Attestor {
    proc_root: PathBuf,
    hashes: Mutex<HashMap<FileIdentity, String>>,
    users: NameTable,
    groups: NameTable,
}

/// An `/etc/passwd`- or `/etc/group`-style file read into a map, read again only when its
/// modification time or size changes (one `stat` per lookup instead of a parse).
#[derive(Debug)]
struct NameTable {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, Names)>>,
}

/// A file's modification time (seconds, nanoseconds) and size.
type FileStamp = (i64, i64, u64);

/// Names by numeric ID.
type Names = Arc<HashMap<u32, String>>;

impl NameTable {
    fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    fn name(&self, id: u32) -> Option<String> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let stamp = (meta.mtime(), meta.mtime_nsec(), meta.len());
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = match &*cached {
            Some((at, table)) if *at == stamp => Arc::clone(table),
            _ => {
                let table = Arc::new(read_names(&self.path));
                *cached = Some((stamp, Arc::clone(&table)));
                table
            }
        };
        table.get(&id).cloned()
    }
}

/// What identifies a file's content without reading it: device, inode, size, and change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// How many executable hashes are remembered.
const HASH_CACHE: usize = 4096;

/// Executables larger than this are not hashed (no `unix:sha256` selector).
const MAX_HASHED: u64 = 1 << 30;

impl Default for Attestor {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl Attestor {
    /// An attestor reading process information under `proc_root` (normally `/proc`).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            hashes: Mutex::new(HashMap::new()),
            users: NameTable::new("/etc/passwd"),
            groups: NameTable::new("/etc/group"),
        }
    }

    /// The selectors of the process `peer`.
    pub fn attest(&self, peer: PeerCredentials) -> Result<Selectors, AttestError> {
        let pid = peer.pid;
        let dir = self.proc_root.join(pid.to_string());
        let proc_err = |source| AttestError::Proc { pid, source };
        let started = start_time(&dir).map_err(proc_err)?;

        let mut selectors = Selectors::new();
        selectors.insert(format!("unix:uid:{}", peer.uid));
        selectors.insert(format!("unix:gid:{}", peer.gid));
        if let Some(name) = self.users.name(peer.uid) {
            selectors.insert(format!("unix:user:{name}"));
        }
        if let Some(name) = self.groups.name(peer.gid) {
            selectors.insert(format!("unix:group:{name}"));
        }
        let status = std::fs::read_to_string(dir.join("status")).map_err(proc_err)?;
        for gid in supplementary_groups(&status) {
            selectors.insert(format!("unix:supplementary_gid:{gid}"));
            if let Some(name) = self.groups.name(gid) {
                selectors.insert(format!("unix:supplementary_group:{name}"));
            }
        }
        // The executable: its path (as the kernel names it) and the hash of its content.
        let exe = dir.join("exe");
        if let Ok(path) = std::fs::read_link(&exe) {
            let path = path.to_string_lossy();
            // A deleted executable shows as "<path> (deleted)": its path no longer names it.
            if !path.ends_with(" (deleted)") {
                selectors.insert(format!("unix:path:{path}"));
            }
            if let Some(hash) = self.executable_hash(&exe) {
                selectors.insert(format!("unix:sha256:{hash}"));
            }
        }
        if let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup"))
            && let Some(id) = container_id(&cgroup)
        {
            selectors.insert(format!("unix:container_id:{id}"));
        }
        if start_time(&dir).map_err(proc_err)? != started {
            return Err(AttestError::PidReused { pid });
        }
        Ok(selectors)
    }

    /// Whether attesting `pid` now would read and hash its whole executable (its hash is
    /// not cached yet): such an attestation belongs on a blocking thread, not on the
    /// runtime that answers every other workload.
    pub fn would_hash(&self, pid: i32) -> bool {
        let exe = self.proc_root.join(pid.to_string()).join("exe");
        std::fs::metadata(exe).is_ok_and(|meta| {
            meta.len() <= MAX_HASHED && self.cached(&FileIdentity::of(&meta)).is_none()
        })
    }

    /// The hex SHA-256 of the file behind `/proc/<pid>/exe`, from the cache when its
    /// identity is unchanged.
    fn executable_hash(&self, exe: &Path) -> Option<String> {
        let mut file = std::fs::File::open(exe).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() > MAX_HASHED {
            return None;
        }
        let identity = FileIdentity::of(&meta);
        if let Some(hash) = self.cached(&identity) {
            return Some(hash);
        }
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            context.update(buf.get(..n)?);
        }
        let hash = wimse_core::digest::hex(context.finish().as_ref());
        let mut hashes = self
            .hashes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if hashes.len() >= HASH_CACHE {
            hashes.clear();
        }
        hashes.insert(identity, hash.clone());
        Some(hash)
    }

    fn cached(&self, identity: &FileIdentity) -> Option<String> {
        self.hashes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(identity)
            .cloned()
    }
}

/// Field 22 of `/proc/<pid>/stat`, the start time in clock ticks since boot. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn start_time(dir: &Path) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(dir.join("stat"))?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable stat");
    let after = stat.rfind(')').ok_or_else(bad)?;
    let rest = stat.get(after + 1..).ok_or_else(bad)?;
    // After the name come field 3 (state) onwards; field 22 is the 20th of them.
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)
}

/// The `Groups:` line of `/proc/<pid>/status`.
fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The names by numeric ID in an `/etc/passwd`- or `/etc/group`-style file
/// (`name:x:id:...`); the first name of an ID wins.
fn read_names(file: &Path) -> HashMap<u32, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>()
            && !name.is_empty()
        {
            names.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// A container runtime's ID in a cgroup path: the last 64-hex-digit run, as docker,
/// containerd and cri-o name their scopes (`/docker/<id>`, `cri-containerd-<id>.scope`).
fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().rev().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split(['/', '-', '.', ':'])
            .rev()
            .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerCredentials {
        let pid = i32::try_from(std::process::id()).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> u32 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            // Real, effective, saved, filesystem: the effective one.
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        PeerCredentials {
            pid,
            uid: field("Uid:"),
            gid: field("Gid:"),
        }
    }

    #[test]
    fn this_process_is_attested_with_uid_path_and_hash() {
        let attestor = Attestor::default();
        assert!(attestor.would_hash(me().pid), "nothing is cached yet");
        let selectors = attestor.attest(me()).unwrap();
        assert!(selectors.contains(&format!("unix:uid:{}", me().uid)));
        assert!(selectors.contains(&format!("unix:gid:{}", me().gid)));
        let exe = std::env::current_exe().unwrap();
        assert!(selectors.contains(&format!("unix:path:{}", exe.display())));
        let bytes = std::fs::read(&exe).unwrap();
        let expected = wimse_core::digest::hex(&wimse_core::digest::sha256(&bytes));
        assert!(selectors.contains(&format!("unix:sha256:{expected}")));
        assert!(!attestor.would_hash(me().pid), "the hash is cached now");
        // The second attestation comes from the hash cache and agrees.
        assert_eq!(attestor.attest(me()).unwrap(), selectors);
    }

    #[test]
    fn a_process_that_does_not_exist_is_not_attested() {
        let ghost = PeerCredentials {
            pid: i32::MAX,
            uid: 0,
            gid: 0,
        };
        assert!(matches!(
            Attestor::default().attest(ghost),
            Err(AttestError::Proc { .. })
        ));
    }

    #[test]
    fn start_time_is_read_after_a_command_name_with_spaces_and_parens() {
        let dir = tempfile::tempdir().unwrap();
        let fields: Vec<String> = (3..=22).map(|n| n.to_string()).collect();
        std::fs::write(
            dir.path().join("stat"),
            format!("42 (a b) (c)) {} 23 24", fields.join(" ")),
        )
        .unwrap();
        assert_eq!(start_time(dir.path()).unwrap(), 22);
        std::fs::write(dir.path().join("stat"), "42 (x) S 1").unwrap();
        assert!(start_time(dir.path()).is_err());
    }

    #[test]
    fn supplementary_groups_come_from_the_status_line() {
        assert_eq!(
            supplementary_groups("Name:\tx\nGroups:\t4 24 27 \nUid:\t1"),
            vec![4, 24, 27]
        );
        assert!(supplementary_groups("Groups:\n").is_empty());
    }

    #[test]
    fn container_ids_are_found_in_common_cgroup_layouts() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id(&format!("0::/system.slice/docker-{id}.scope\n")),
            Some(id.clone())
        );
        assert_eq!(
            container_id(&format!("12:pids:/docker/{id}\n")),
            Some(id.clone())
        );
        assert_eq!(
            container_id(&format!(
                "0::/kubepods/burstable/pod1/cri-containerd-{id}.scope"
            )),
            Some(id)
        );
        assert_eq!(container_id("0::/user.slice/user-1000.slice\n"), None);
    }

    #[test]
    fn names_are_looked_up_by_numeric_id() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        std::fs::write(
            &file,
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        let table = NameTable::new(&file);
        assert_eq!(table.name(1000).as_deref(), Some("web"));
        assert_eq!(table.name(7), None);
        // A changed file is read again (its size changes with it).
        std::fs::write(
            &file,
            "root:x:0:0::/root:/bin/sh\napi:x:1000:1000::/:/bin/sh\nnew:x:7:7::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(table.name(1000).as_deref(), Some("api"));
        assert_eq!(table.name(7).as_deref(), Some("new"));
    }
}
