//! How full the per-socket maps are, for the metrics: the kernel keeps one record per captured
//! socket (`AG_BY_COOKIE`, `AG_BY_PEER`) and per gateway-owned socket (`AG_BYPASS`), in LRU maps
//! of fixed capacity; a full map evicts records of live connections, which then fail closed.
//!
//! Counted through handles of their own (opened from the pins), so that walking 65,536 keys at
//! scrape time never holds the locks the accept path takes.

use std::{path::Path, sync::Mutex};

use aya::maps::{HashMap, Map, MapData, MapError};
use gateway_common::{map_names, OrigDst, PeerKey};

enum Counted {
    Cookie(HashMap<MapData, u64, OrigDst>),
    Peer(HashMap<MapData, PeerKey, OrigDst>),
    Bypass(HashMap<MapData, u64, u8>),
}

struct Counter {
    name: &'static str,
    capacity: u32,
    map: Mutex<Counted>,
}

pub struct Occupancy {
    maps: Vec<Counter>,
}

/// One map's entries and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

fn open(pin_dir: &Path, name: &'static str) -> Result<(Map, u32), MapError> {
    let data = MapData::from_pin(pin_dir.join(name))?;
    let capacity = data.info()?.max_entries();
    Ok((Map::from_map_data(data)?, capacity))
}

impl Occupancy {
    /// Opens the pinned maps of the gateway loaded from `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Occupancy, MapError> {
        let mut maps = Vec::new();
        let (m, capacity) = open(pin_dir, map_names::BY_COOKIE)?;
        maps.push(Counter {
            name: map_names::BY_COOKIE,
            capacity,
            map: Mutex::new(Counted::Cookie(m.try_into()?)),
        });
        let (m, capacity) = open(pin_dir, map_names::BY_PEER)?;
        maps.push(Counter {
            name: map_names::BY_PEER,
            capacity,
            map: Mutex::new(Counted::Peer(m.try_into()?)),
        });
        let (m, capacity) = open(pin_dir, map_names::BYPASS)?;
        maps.push(Counter {
            name: map_names::BYPASS,
            capacity,
            map: Mutex::new(Counted::Bypass(m.try_into()?)),
        });
        Ok(Occupancy { maps })
    }

    /// Walks each map's keys. Keys deleted during the walk make the kernel restart it, so the
    /// walk is bounded and the count capped at the capacity.
    pub fn count(&self) -> Vec<Fill> {
        self.maps
            .iter()
            .map(|c| {
                let cap = c.capacity as usize;
                let map = c.map.lock().unwrap_or_else(|p| p.into_inner());
                let n = match &*map {
                    Counted::Cookie(m) => m.keys().take(2 * cap).filter(Result::is_ok).count(),
                    Counted::Peer(m) => m.keys().take(2 * cap).filter(Result::is_ok).count(),
                    Counted::Bypass(m) => m.keys().take(2 * cap).filter(Result::is_ok).count(),
                };
                Fill {
                    map: c.name,
                    entries: n.min(cap) as u64,
                    capacity: cap as u64,
                }
            })
            .collect()
    }
}
