//! The trait itself: each `async fn` becomes `fn .. -> impl Future<Output = ..> + Send`, so the
//! server can spawn its futures; the trait gains `Send + Sync + 'static`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{FnArg, Pat, TraitItemFn};

use super::model::{Action, Controller};

pub fn generate(controller: &Controller) -> TokenStream {
    let item = &controller.item;
    let attrs = &item.attrs;
    let vis = &item.vis;
    let trait_token = &item.trait_token;
    let ident = &item.ident;
    let supertraits = item.supertraits.iter();
    let methods = controller.actions.iter().map(method);
    quote! {
        #(#attrs)*
        #vis #trait_token #ident: #(#supertraits +)* ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#methods)*
        }
    }
}

/// `async fn hello(&self, title: String) -> String;` becomes
/// `fn hello(&self, title: String) -> impl Future<Output = String> + Send;`.
fn method(action: &Action) -> TokenStream {
    let TraitItemFn { attrs, sig, default, .. } = &action.method;
    let fn_token = &sig.fn_token;
    let ident = &sig.ident;
    let mut inputs = sig.inputs.clone();
    // Errors about a non-`Send` implementation point back at the user's `async`.
    let async_span = sig.asyncness.map_or(Span::call_site(), |a| a.span);
    let send = quote_spanned!(async_span=> ::core::marker::Send);
    let output = action.output.trait_type();
    let future = quote_spanned!(action.output.span(&action.method)=>
        impl ::core::future::Future<Output = #output> + #send
    );

    match default {
        Some(body) => quote! {
            #(#attrs)*
            #fn_token #ident(#inputs) -> #future {
                async move #body
            }
        },
        None => {
            // `mut x` is only allowed where there is a body.
            for input in &mut inputs {
                if let FnArg::Typed(typed) = input
                    && let Pat::Ident(pat) = &mut *typed.pat
                {
                    pat.mutability = None;
                }
            }
            quote! {
                #(#attrs)*
                #fn_token #ident(#inputs) -> #future;
            }
        }
    }
}
