//! Attach rows: opening an existing object, each handle kept until its
//! batch is timed (see [`time_attach`]).

use std::ffi::CString;

use crate::harness::Params;
use crate::measure::{err, time_attach, CellName};
use crate::raw;
use crate::sections::Big;
use shmsync::ShmCell;

pub fn cell_open(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let _cell = ShmCell::<u64>::create(&name.name, 0).map_err(err)?;
    time_attach(p, || ShmCell::<u64>::open(&name.name).map_err(err), drop)
}

pub fn big_open(p: &Params, big: &str) -> Result<f64, String> {
    time_attach(p, || ShmCell::<Big>::open(big).map_err(err), drop)
}

pub fn raw_attach(p: &Params) -> Result<f64, String> {
    let name = CellName::new();
    let _cell = ShmCell::<u64>::create(&name.name, 0).map_err(err)?;
    let c = CString::new(name.name.as_str()).map_err(err)?;
    time_attach(p, || Ok(raw::attach(&c)), raw::detach)
}
