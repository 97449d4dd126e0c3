//! Loads `gateway-ebpf`, reuses or creates its pinned maps, and attaches the programs to anchor
//! cgroups through pinned links, so that redirection (and therefore fail-closed refusal) keeps
//! working while the gateway process is down or being upgraded.
//!
//! Pin layout under the pin directory (default `/sys/fs/bpf/agentgate`):
//!   AG_*                            maps (reused by the next start: same classifications)
//!   AG_META                         the layout version of all of it (layout.rs): pins of
//!                                   another version are refused, never reused
//!   links/<cgroup-id>_<generation>_<program>   one link per program and anchor cgroup
//!                                (bpffs refuses dots in names)
//! A start attaches a new generation first and only then drops older links, so there is no
//! instant at which a managed cgroup is not covered.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Map, MapError},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, SockOps,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use gateway_common::map_names;

use super::{layout, maps::KernelMaps};

const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "sendmsg4",
    "sendmsg6",
];
const SOCK_OPS_PROGRAM: &str = "handover";
const SOCK_PROGRAMS: [&str; 2] = ["sock_release", "sock_create"];
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object failed: {source} (if the pinned maps in {} come from an incompatible agentgate version, run `agentgate uninstall` first)", pin_dir.display())]
    Load {
        pin_dir: PathBuf,
        source: Box<EbpfError>,
    },
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: String,
        source: Box<ProgramError>,
    },
    #[error("eBPF object has no {kind} `{name}`")]
    Missing { kind: &'static str, name: String },
    #[error("eBPF map `{name}`: {source}")]
    Map { name: String, source: MapError },
    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting bpffs on {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A cgroup attachment through a bpf_link always coexists with other programs (the kernel takes
/// it as BPF_F_ALLOW_MULTI and rejects explicit flags), so `Single` is the mode that works here.
///
/// Attaches program `$name` (of aya type `$ty`; the program types share no attach trait) to a
/// cgroup and pins the link at `$target`, unless that pin already exists.
macro_rules! attach_pinned {
    ($ebpf:expr, $ty:ty, $name:expr, $cgroup:expr, $target:expr) => {{
        let target: PathBuf = $target;
        if !target.exists() {
            let p: &mut $ty = program(&mut $ebpf, $name)?;
            let id = p
                .attach($cgroup, CgroupAttachMode::Single)
                .map_err(prog_err($name))?;
            let link = FdLink::try_from(p.take_link(id).map_err(prog_err($name))?)
                .map_err(|e| pin_err(&target, e))?;
            link.pin(&target).map_err(|e| pin_err(&target, e))?;
        }
    }};
}

pub struct Kernel {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    generation: u64,
    maps: Arc<KernelMaps>,
}

impl Kernel {
    /// Loads the programs into the kernel and opens (or creates) the pinned maps in `pin_dir`.
    /// Nothing is attached yet.
    pub fn load(pin_dir: &Path) -> Result<Self, KernelError> {
        ensure_bpffs(pin_dir)?;
        // Before aya opens any pinned map by name: a map of another layout must not be reused.
        layout::check(pin_dir)?;
        std::fs::create_dir_all(pin_dir.join("links")).map_err(io_err(pin_dir))?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/gateway-ebpf"
            )))
            .map_err(|source| KernelError::Load {
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        for name in SOCK_ADDR_PROGRAMS {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            p.load().map_err(prog_err(name))?;
        }
        let p: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?;
        p.load().map_err(prog_err(SOCK_OPS_PROGRAM))?;
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSock = program(&mut ebpf, name)?;
            p.load().map_err(prog_err(name))?;
        }

        let maps = Arc::new(KernelMaps {
            targets: typed_map(&mut ebpf, map_names::TARGETS)?,
            cgroups: typed_map(&mut ebpf, map_names::CGROUPS)?,
            by_peer: typed_map(&mut ebpf, map_names::BY_PEER)?,
            bypass: typed_map(&mut ebpf, map_names::BYPASS)?,
            local_nets: typed_map(&mut ebpf, map_names::LOCAL_NETS)?,
            local_ports: typed_map(&mut ebpf, map_names::LOCAL_PORTS)?,
        });
        layout::stamp(pin_dir)?;
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            generation,
            maps,
        })
    }

    pub fn maps(&self) -> Arc<KernelMaps> {
        self.maps.clone()
    }

    /// Starts forwarding the programs' aya-log records to `log` (and so to tracing).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
            .map_err(|e| tracing::warn!("eBPF log forwarding unavailable: {e}"))
            .ok()
    }

    /// Attaches every program of this generation to the cgroup at `path` (id `cgroup_id`) and
    /// pins the links. Idempotent per generation.
    pub fn attach(&mut self, cgroup_id: u64, path: &Path) -> Result<(), KernelError> {
        let cgroup = File::open(path).map_err(io_err(path))?;
        let pin = |name: &str| {
            self.pin_dir
                .join("links")
                .join(format!("{cgroup_id}_{}_{name}", self.generation))
        };
        for name in SOCK_ADDR_PROGRAMS {
            attach_pinned!(self.ebpf, CgroupSockAddr, name, &cgroup, pin(name));
        }
        attach_pinned!(
            self.ebpf,
            SockOps,
            SOCK_OPS_PROGRAM,
            &cgroup,
            pin(SOCK_OPS_PROGRAM)
        );
        for name in SOCK_PROGRAMS {
            attach_pinned!(self.ebpf, CgroupSock, name, &cgroup, pin(name));
        }
        Ok(())
    }

    /// Detaches links left by earlier generations, and this generation's links to cgroups that
    /// are no longer anchors. Call after `attach` has covered every current anchor.
    pub fn detach_except(&self, anchors: &[u64]) -> Result<usize, KernelError> {
        let dir = self.pin_dir.join("links");
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('_');
            let cgroup: Option<u64> = parts.next().and_then(|s| s.parse().ok());
            let generation: Option<u64> = parts.next().and_then(|s| s.parse().ok());
            let current =
                generation == Some(self.generation) && cgroup.is_some_and(|c| anchors.contains(&c));
            if !current {
                unpin_link(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Detaches every pinned link and removes the pinned maps: afterwards managed workloads reach
/// targets directly again. Returns what was removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let links = pin_dir.join("links");
    if links.exists() {
        for entry in std::fs::read_dir(&links).map_err(io_err(&links))? {
            let path = entry.map_err(io_err(&links))?.path();
            unpin_link(&path)?;
            removed.push(path);
        }
        std::fs::remove_dir(&links).map_err(io_err(&links))?;
    }
    for entry in std::fs::read_dir(pin_dir).map_err(io_err(pin_dir))? {
        let path = entry.map_err(io_err(pin_dir))?.path();
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        removed.push(path);
    }
    std::fs::remove_dir(pin_dir).map_err(io_err(pin_dir))?;
    Ok(removed)
}

fn unpin_link(path: &Path) -> Result<(), KernelError> {
    let link = PinnedLink::from_pin(path).map_err(|e| pin_err(path, e))?;
    // Unpinned and then dropped: the last reference goes and the kernel detaches the program.
    let fd_link = link.unpin().map_err(io_err(path))?;
    drop(fd_link);
    Ok(())
}

fn ensure_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(mount_point) {
        return Ok(());
    }
    let is_bpffs = nix::sys::statfs::statfs(mount_point)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false);
    if !is_bpffs {
        std::fs::create_dir_all(mount_point).map_err(io_err(mount_point))?;
        nix::mount::mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| KernelError::Mount {
            path: mount_point.to_path_buf(),
            source,
        })?;
        tracing::info!("mounted bpffs on {}", mount_point.display());
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| KernelError::Missing {
        kind: "program",
        name: name.to_string(),
    })?;
    p.try_into().map_err(prog_err(name))
}

/// Takes map `name` out of the object as the typed map `T`, behind the lock `KernelMaps` uses.
fn typed_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<Mutex<T>, KernelError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| KernelError::Missing {
        kind: "map",
        name: name.to_string(),
    })?;
    T::try_from(map).map(Mutex::new).map_err(map_err(name))
}

fn prog_err(name: &str) -> impl FnOnce(ProgramError) -> KernelError + '_ {
    move |source| KernelError::Program {
        name: name.to_string(),
        source: Box::new(source),
    }
}

fn map_err(name: &str) -> impl FnOnce(MapError) -> KernelError + '_ {
    move |source| KernelError::Map {
        name: name.to_string(),
        source,
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> KernelError {
    KernelError::Pin {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
