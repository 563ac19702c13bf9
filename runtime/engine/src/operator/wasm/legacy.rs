//! Components built against an earlier version of the contract.
//!
//! Contract 0.2.0 changed only `handle-batch` (a typed batch instead of
//! 0.1.0's byte frame); 0.3.0 added the `timers` interface, the
//! `on-timer` export and `state.map-range` (a 0.3.0 component built before
//! `map-range` does not import it, and loads as is). The `output`, `log`
//! and `types` interfaces, the rest of `state` and the `init`, `handle`
//! and `migrate` exports are the same in all three. So a component built
//! for an earlier contract is linked to the same host functions under its
//! interfaces' old names; it has no timers and no `map-range`.
//! One built for 0.1.0 runs on the per-event path (its `handle-batch`, of
//! the old type, is never called); one built for 0.2.0 keeps the batched
//! path, whose types did not change from 0.2.0 to 0.3.0.
//!
//! wasmtime matches import names by semver compatibility, under which
//! 0.1, 0.2 and 0.3 are different versions; hence the old names are defined
//! here one by one.

use wasmtime::component::Linker;
use wasmtime::StoreContextMut;

use super::bindings::eddy::operator::{log, output, state, types};
use super::HostData;

/// The contract versions before [`super::CONTRACT`] whose components still
/// load.
pub const EARLIER: &[&str] = &["eddy:operator@0.1.0", "eddy:operator@0.2.0"];

/// The contract whose `handle-batch` took a byte frame: its components run
/// per event.
pub const FRAME_BATCH: &str = "eddy:operator@0.1.0";

/// The batch types of 0.2.0, the same as today's
/// ([`super::batch::INTERFACE`]).
const BATCH_0_2: &str = "eddy:operator/batch@0.2.0";

/// The state, output, log and types interfaces of every [`EARLIER`]
/// contract, on the same host functions as the current ones (and 0.2.0's
/// batch types).
pub(super) fn add_to_linker(linker: &mut Linker<HostData>) -> anyhow::Result<()> {
    linker.instance(BATCH_0_2)?;
    for contract in EARLIER {
        let version = contract.trim_start_matches("eddy:operator@");
        let name = |interface: &str| format!("eddy:operator/{interface}@{version}");
        linker.instance(&name("types"))?;

        type Cx<'a> = StoreContextMut<'a, HostData>;
        let mut s = linker.instance(&name("state"))?;
        s.func_wrap("get", |mut c: Cx, (n,): (String,)| {
            state::Host::get(&mut c.data_mut().ctx, n).map(|r| (r,))
        })?;
        s.func_wrap("set", |mut c: Cx, (n, v): (String, Vec<u8>)| {
            state::Host::set(&mut c.data_mut().ctx, n, v)
        })?;
        s.func_wrap("delete", |mut c: Cx, (n,): (String,)| {
            state::Host::delete(&mut c.data_mut().ctx, n).map(|r| (r,))
        })?;
        s.func_wrap("map-get", |mut c: Cx, (n, f): (String, String)| {
            state::Host::map_get(&mut c.data_mut().ctx, n, f).map(|r| (r,))
        })?;
        s.func_wrap(
            "map-set",
            |mut c: Cx, (n, f, v): (String, String, Vec<u8>)| {
                state::Host::map_set(&mut c.data_mut().ctx, n, f, v)
            },
        )?;
        s.func_wrap("map-delete", |mut c: Cx, (n, f): (String, String)| {
            state::Host::map_delete(&mut c.data_mut().ctx, n, f).map(|r| (r,))
        })?;
        s.func_wrap("map-entries", |mut c: Cx, (n,): (String,)| {
            state::Host::map_entries(&mut c.data_mut().ctx, n).map(|r| (r,))
        })?;
        s.func_wrap("map-len", |mut c: Cx, (n,): (String,)| {
            state::Host::map_len(&mut c.data_mut().ctx, n).map(|r| (r,))
        })?;
        s.func_wrap("list-push", |mut c: Cx, (n, i): (String, Vec<u8>)| {
            state::Host::list_push(&mut c.data_mut().ctx, n, i).map(|r| (r,))
        })?;
        s.func_wrap("list-len", |mut c: Cx, (n,): (String,)| {
            state::Host::list_len(&mut c.data_mut().ctx, n).map(|r| (r,))
        })?;
        s.func_wrap(
            "list-range",
            |mut c: Cx, (n, start, end): (String, u32, u32)| {
                state::Host::list_range(&mut c.data_mut().ctx, n, start, end).map(|r| (r,))
            },
        )?;
        s.func_wrap("list-trim", |mut c: Cx, (n, keep): (String, u32)| {
            state::Host::list_trim(&mut c.data_mut().ctx, n, keep).map(|r| (r,))
        })?;
        s.func_wrap("clear", |mut c: Cx, (): ()| {
            state::Host::clear(&mut c.data_mut().ctx)
        })?;

        let mut o = linker.instance(&name("output"))?;
        o.func_wrap("emit", |mut c: Cx, (k, v): (String, Vec<u8>)| {
            output::Host::emit(&mut c.data_mut().ctx, k, v)
        })?;

        let mut l = linker.instance(&name("log"))?;
        l.func_wrap(
            "log",
            |mut c: Cx, (level, message): (types::Level, String)| {
                log::Host::log(&mut c.data_mut().ctx, level, message)
            },
        )?;
    }
    Ok(())
}
