//! The layout version of the pins (`gateway_common::MAP_LAYOUT_VERSION`), kept in the pinned map
//! `AG_META`. Checked before the programs are loaded: aya reuses a pinned map by name, and a map
//! of another layout would be misread by this version's programs (or refused half-way through
//! the load), so an incompatible pin set is refused as a whole, with the way out in the message.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError};
use gateway_common::{map_names, MAP_LAYOUT_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the pins in {} are of map layout version {found}; this agentgate uses version \
         {expected} and does not reuse them. Stop the gateway that made them, run \
         `agentgate uninstall --pin-dir {}` (managed workloads reach targets directly until the \
         next start), then start this one",
        pin_dir.display(), pin_dir.display()
    )]
    Incompatible {
        pin_dir: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "{}: the map layout version cannot be read ({source}): these pins come from another \
         agentgate; run `agentgate uninstall --pin-dir {}` first",
        pin_dir.join(map_names::META).display(), pin_dir.display()
    )]
    Unreadable { pin_dir: PathBuf, source: MapError },
    #[error("pinning the map layout version in {}: {reason}", pin_dir.display())]
    Stamp { pin_dir: PathBuf, reason: String },
}

/// The layout version pinned in `pin_dir`, `None` when there is no `AG_META` (an empty
/// directory, or pins of a version from before it existed: layout 1).
pub fn read(pin_dir: &Path) -> Result<Option<u32>, LayoutError> {
    let path = pin_dir.join(map_names::META);
    if !path.exists() {
        return Ok(None);
    }
    let unreadable = |source| LayoutError::Unreadable {
        pin_dir: pin_dir.to_path_buf(),
        source,
    };
    let map =
        Map::from_map_data(MapData::from_pin(&path).map_err(unreadable)?).map_err(unreadable)?;
    let array: Array<MapData, u32> = Array::try_from(map).map_err(unreadable)?;
    array.get(&0, 0).map(Some).map_err(unreadable)
}

/// Refuses pins of another layout version. Call before loading anything from `pin_dir`.
pub fn check(pin_dir: &Path) -> Result<(), LayoutError> {
    match read(pin_dir)? {
        Some(found) if found != MAP_LAYOUT_VERSION => Err(LayoutError::Incompatible {
            pin_dir: pin_dir.to_path_buf(),
            found,
            expected: MAP_LAYOUT_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Pins this version's `AG_META` if there is none yet (a fresh directory, or pins of layout 1
/// from before the version existed). Two gateways starting at once may race: the loser's pin
/// fails and it checks the winner's instead.
pub fn stamp(pin_dir: &Path) -> Result<(), LayoutError> {
    if read(pin_dir)?.is_some() {
        return check(pin_dir);
    }
    let stamp_err = |e: &dyn std::fmt::Display| LayoutError::Stamp {
        pin_dir: pin_dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut meta = Array::<MapData, u32>::create(1, 0).map_err(|e| stamp_err(&e))?;
    meta.set(0, MAP_LAYOUT_VERSION, 0)
        .map_err(|e| stamp_err(&e))?;
    match meta.pin(pin_dir.join(map_names::META)) {
        Ok(()) => Ok(()),
        Err(e) => {
            if read(pin_dir)?.is_some() {
                check(pin_dir)
            } else {
                Err(stamp_err(&e))
            }
        }
    }
}

/// Pins `AG_META` holding `version` (tests: a pin set of another version).
#[cfg(test)]
pub fn stamp_as(pin_dir: &Path, version: u32) -> Result<(), MapError> {
    let mut meta = Array::<MapData, u32>::create(1, 0)?;
    meta.set(0, version, 0)?;
    meta.pin(pin_dir.join(map_names::META))
        .map_err(|e| MapError::PinError {
            name: Some(map_names::META.into()),
            error: e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on the bpffs (root only; these tests do not skip).
    struct PinDir(PathBuf);
    impl PinDir {
        fn new(tag: &str) -> Self {
            let p = PathBuf::from("/sys/fs/bpf").join(format!(
                "agentgate-layout-test-{}-{tag}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("bpffs mounted and root");
            Self(p)
        }
    }
    impl Drop for PinDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0.join(map_names::META));
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn another_layout_version_is_refused_with_the_uninstall_hint() {
        let dir = PinDir::new("other");
        stamp_as(&dir.0, MAP_LAYOUT_VERSION + 1).unwrap();
        let e = check(&dir.0).unwrap_err();
        assert!(
            matches!(e, LayoutError::Incompatible { found, .. } if found == MAP_LAYOUT_VERSION + 1),
            "{e}"
        );
        assert!(
            e.to_string().contains("agentgate uninstall --pin-dir"),
            "{e}"
        );
        // Stamping does not overwrite it either.
        assert!(stamp(&dir.0).is_err());
    }

    #[test]
    fn an_empty_directory_is_stamped_and_then_accepted() {
        let dir = PinDir::new("fresh");
        assert_eq!(read(&dir.0).unwrap(), None);
        check(&dir.0).unwrap();
        stamp(&dir.0).unwrap();
        assert_eq!(read(&dir.0).unwrap(), Some(MAP_LAYOUT_VERSION));
        check(&dir.0).unwrap();
        stamp(&dir.0).unwrap();
    }
}
