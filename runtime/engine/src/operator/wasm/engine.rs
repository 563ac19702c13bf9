//! The engine every operator shares, and the sandbox each instance runs
//! in: WASI linked but granting nothing, clocks stopped at zero, a memory
//! cap, and a CPU budget per call (epoch deadlines).

use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::Engine;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::{HostData, OperatorWorld};
use crate::operator::host::OpCtx;

/// The engine all operators share.
pub fn engine() -> anyhow::Result<Engine> {
    engine_with(true)
}

/// An engine with (or, for measuring its cost, without) the per-call CPU
/// limit; without it, `max_call_ms` is not enforced.
pub fn engine_with(cpu_limit: bool) -> anyhow::Result<Engine> {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // The synchronous call path is much cheaper without async concurrency.
    config.concurrency_support(false);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // CPU budget per call: the engine's epoch ticks every EPOCH_TICK and
    // each call gets a deadline of `max_call_ms` worth of ticks.
    config.epoch_interruption(cpu_limit);
    if std::env::var_os("EDDY_PERF_MAP").is_some() {
        // Name JIT-compiled guest functions for `perf report`.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)?;
    if !cpu_limit {
        return Ok(engine);
    }
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("eddy-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
    Ok(engine)
}

/// Granularity of the per-call CPU budget.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch ticks for a budget of `ms` milliseconds (at least one full tick).
pub(super) fn deadline_ticks(ms: u64) -> u64 {
    ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
}

/// Caps an instance's linear memory, naming the limit when it is hit.
pub(super) struct MemoryCap {
    pub(super) max: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            return Err(wasmtime::Error::msg(format!(
                "{}: growing linear memory to {desired} bytes, over max_memory_bytes = {}",
                crate::operator::MEMORY_LIMIT,
                self.max
            )));
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

impl WasiView for HostData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock stopped at zero: operators get no time but the event's.
struct NoClock;
impl HostWallClock for NoClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}
impl HostMonotonicClock for NoClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

pub(super) fn sandbox(stderr: wasmtime_wasi::p2::pipe::MemoryOutputPipe) -> WasiCtx {
    // No preopened directories, no environment, no arguments, no network,
    // stopped clocks; stdout is discarded, stderr captured.
    let mut b = WasiCtxBuilder::new();
    b.stderr(stderr);
    b.wall_clock(NoClock)
        .monotonic_clock(NoClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

/// The types of the window aggregate (`wit/window.wit`).
const WINDOW_INTERFACE: &str = "eddy:operator/window@0.3.0";

pub(super) fn linker(engine: &Engine) -> anyhow::Result<Linker<HostData>> {
    use wasmtime_wasi::p2::bindings::random;
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // `wasi:random` replaced by the deterministic one (module docs).
    linker.allow_shadowing(true);
    type Me = wasmtime::component::HasSelf<HostData>;
    random::random::add_to_linker::<HostData, Me>(&mut linker, |d| d)?;
    random::insecure::add_to_linker::<HostData, Me>(&mut linker, |d| d)?;
    random::insecure_seed::add_to_linker::<HostData, Me>(&mut linker, |d| d)?;
    linker.allow_shadowing(false);
    // The operator's own interfaces are implemented on its host context
    // (`operator::host`, one file per interface).
    OperatorWorld::add_to_linker::<HostData, wasmtime::component::HasSelf<OpCtx>>(
        &mut linker,
        |d| &mut d.ctx,
    )?;
    // The batch types (`batched-operator` imports their interface).
    linker.instance(super::batch::INTERFACE)?;
    // The window aggregate's types (`window-operator` imports them).
    linker.instance(WINDOW_INTERFACE)?;
    // Components built for an earlier contract: the same functions under
    // the old names.
    super::legacy::add_to_linker(&mut linker)?;
    Ok(linker)
}
