//! Host bindings of the operator contract (`wit/`), the runtime's single
//! `bindgen!`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "operator",
    imports: { default: trappable },
    ownership: Borrowing { duplicate_if_necessary: true },
});
