//! `#[controller("name")]`: a trait of `async fn` actions becomes the trait (with `Send`
//! futures), a server wrapper and a client proxy.
//!
//! - [`attrs`] reads `#[controller("..")]` and `#[action(..)]`;
//! - [`model`] checks the trait and classifies each action's parameters and return type;
//! - [`trait_def`], [`server`] and [`client`] write the three outputs.

mod attrs;
mod client;
mod model;
mod server;
mod trait_def;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::{Ident, ItemTrait};

/// Expands `#[controller(attr)] item`. Misuse becomes `compile_error!`s next to the trait as
/// written (minus its `#[action]` attributes), so code using the trait still type-checks and
/// the user sees the real mistakes rather than a cascade.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item: ItemTrait = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[controller] goes on a trait: #[controller(\"users\")] pub trait Users { .. }",
            )
            .to_compile_error();
            return quote!(#error #item);
        }
    };
    let name = attrs::controller_name(attr);
    let parsed = model::parse(
        name.clone().unwrap_or_else(|_| syn::LitStr::new("", Span::call_site())),
        item,
    );
    match (name, parsed) {
        (Ok(_), Ok(controller)) => {
            let trait_def = trait_def::generate(&controller);
            let server = server::generate(&controller);
            let client = client::generate(&controller);
            quote! {
                #trait_def
                #server
                #client
            }
        }
        (name, parsed) => {
            let mut errors: Option<syn::Error> = name.err();
            let item = match parsed {
                Ok(controller) => controller.item,
                Err(model::Invalid { error, item }) => {
                    match &mut errors {
                        Some(errors) => errors.combine(error),
                        None => errors = Some(error),
                    }
                    *item
                }
            };
            let errors = errors.map(|e| e.to_compile_error());
            quote!(#errors #item)
        }
    }
}

/// An identifier the user cannot name: locals of the generated code live in the macro's own
/// hygiene context (`macro_rules!`-like), so an action parameter called `responder` or
/// `output` cannot collide with them.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// [`local`], reported at `span` (`output` at the user's return type, say).
fn local_at(name: &str, span: Span) -> Ident {
    Ident::new(name, Span::mixed_site().located_at(span))
}

/// `UsersServer` for `Users`.
fn suffixed(ident: &Ident, suffix: &str) -> Ident {
    Ident::new(&format!("{}{suffix}", ident.unraw()), ident.span())
}

/// The spans of the first and the last token of `ty`: where a type error should start and end.
pub(crate) fn span_range(ty: &syn::Type) -> (Span, Span) {
    let mut tokens = ty.to_token_stream().into_iter();
    let first = tokens.next().map_or(Span::call_site(), |token| token.span());
    let last = tokens.last().map_or(first, |token| token.span());
    (first, last)
}

#[cfg(test)]
mod tests;
