//! The macros of `rpc-core`: `#[controller]`, `#[action]` and `#[derive(Entity)]`.
//!
//! Use them through `rpc_core` (`use rpc_core::{controller, Entity};`); the generated code names
//! everything by absolute `::rpc_core::...` paths.
//!
//! Each macro is a thin entry point over a function on `proc_macro2` token streams
//! (`controller::expand`, `entity::expand`), so the expansion is unit-tested without a
//! compiler in the loop.

use proc_macro::TokenStream;

mod controller;
mod entity;

/// Turns an `async fn` trait into an RPC controller: the trait itself (with `Send` futures), a
/// `{Trait}Server<T>` to register on an `RpcKernel`, and a `{Trait}Client` proxy.
///
/// ```ignore
/// use rpc_core::{controller, Context, RpcStream};
///
/// #[controller("users")]
/// pub trait Users {
///     /// Greets the caller.
///     async fn hello(&self, title: String) -> String;
///     #[action(group = "secret", data(role = "admin"))]
///     async fn save_user(&self, user: User) -> Result<(), CannotSaveUser>;
///     #[action(name = "tick_stream")]
///     async fn ticks(&self, every_ms: u64, count: u32) -> RpcStream<u64>;
///     async fn whoami(&self, ctx: &Context) -> String;
/// }
/// ```
///
/// Every method is an action: an `async fn` taking `&self`, then arguments by name. An argument
/// of type `&Context` is filled in by the server with the calling connection's context and is
/// absent from the client; one of type `RpcStream<T>` is a stream the client sends. The return
/// type decides how the answer travels: `RpcStream<T>` (or `Result<RpcStream<T>, E>`) streams,
/// `Result<T, E>` replies with `T` or the typed error `E`, anything else replies with the value.
///
/// `#[action(name = "...", group = "...", data(key = "value"))]` on a method sets its wire
/// name, adds it to security groups (repeat `group`), and attaches data the security policy can
/// read.
#[proc_macro_attribute]
pub fn controller(attr: TokenStream, item: TokenStream) -> TokenStream {
    controller::expand(attr.into(), item.into()).into()
}

/// Options of one action of a `#[controller]` trait: `name = ".."`, `group = ".."` (repeatable),
/// `data(key = "value", ...)`.
///
/// `#[controller]` reads and removes these attributes; anywhere else, this is an error.
#[proc_macro_attribute]
pub fn action(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "`#[action]` is only valid on a method of a `#[controller]` trait",
    );
    let item = proc_macro2::TokenStream::from(item);
    let error = error.to_compile_error();
    quote::quote!(#error #item).into()
}

/// Gives a type its stable name on the wire: `#[entity(name = "user")]`.
///
/// Generates `impl rpc_core::Entity for T { const ENTITY_NAME: &'static str = "user"; }`.
#[proc_macro_derive(Entity, attributes(entity))]
pub fn derive_entity(input: TokenStream) -> TokenStream {
    entity::expand(input.into()).into()
}
