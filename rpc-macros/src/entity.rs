//! `#[derive(Entity)]`: `impl ::rpc_core::Entity` with the name from `#[entity(name = "...")]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, GenericParam, LitStr, parse_quote};

/// Expands `#[derive(Entity)]` on `input`; misuse becomes a `compile_error!`.
pub fn expand(input: TokenStream) -> TokenStream {
    match syn::parse2::<DeriveInput>(input).and_then(|input| derive(&input)) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    if let Data::Union(union) = &input.data {
        return Err(syn::Error::new_spanned(
            union.union_token,
            "an Entity is a struct or an enum: unions do not cross the wire",
        ));
    }
    let name = entity_name(input)?;

    // `Entity: 'static`, so every parameter of a generic entity must be `'static` too.
    let mut generics = input.generics.clone();
    let bounds: Vec<syn::WherePredicate> = generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(ty) => {
                let ident = &ty.ident;
                Some(parse_quote!(#ident: 'static))
            }
            GenericParam::Lifetime(lt) => {
                let lifetime = &lt.lifetime;
                Some(parse_quote!(#lifetime: 'static))
            }
            GenericParam::Const(_) => None,
        })
        .collect();
    generics.make_where_clause().predicates.extend(bounds);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let ident = &input.ident;

    Ok(quote! {
        impl #impl_generics ::rpc_core::Entity for #ident #ty_generics #where_clause {
            const ENTITY_NAME: &'static str = #name;
        }
    })
}

/// The `name = "..."` of the `#[entity(...)]` attributes of `input`.
fn entity_name(input: &DeriveInput) -> syn::Result<LitStr> {
    let mut name: Option<LitStr> = None;
    for attr in input.attrs.iter().filter(|attr| attr.path().is_ident("entity")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let value: LitStr = meta.value()?.parse()?;
                if value.value().is_empty() {
                    return Err(syn::Error::new_spanned(&value, "an entity name cannot be empty"));
                }
                if name.is_some() {
                    return Err(meta.error("the entity name is given twice"));
                }
                name = Some(value);
                Ok(())
            } else {
                Err(meta.error("unknown `#[entity]` option: expected `name = \"...\"`"))
            }
        })?;
    }
    name.ok_or_else(|| {
        syn::Error::new_spanned(
            &input.ident,
            "an Entity needs a stable name: #[entity(name = \"...\")]",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(input: TokenStream) -> String {
        expand(input).to_string()
    }

    #[test]
    fn named_struct() {
        let out = expand_str(quote! {
            #[derive(Serialize)]
            #[entity(name = "user")]
            struct User { id: u64 }
        });
        let expected = quote! {
            impl ::rpc_core::Entity for User {
                const ENTITY_NAME: &'static str = "user";
            }
        };
        assert_eq!(out, expected.to_string());
    }

    #[test]
    fn generic_enum_gets_static_bounds() {
        let out = expand_str(quote! {
            #[entity(name = "either")]
            enum Either<'a, L: Clone, R, const N: usize> where R: Copy { L(&'a L), R([R; N]) }
        });
        let expected = quote! {
            impl<'a, L: Clone, R, const N: usize> ::rpc_core::Entity for Either<'a, L, R, N>
            where R: Copy, 'a: 'static, L: 'static, R: 'static
            {
                const ENTITY_NAME: &'static str = "either";
            }
        };
        assert_eq!(out, expected.to_string());
    }

    #[test]
    fn missing_name_points_at_ident() {
        let out = expand_str(quote!(
            struct User;
        ));
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("an Entity needs a stable name"), "{out}");
    }

    #[test]
    fn misuse_is_reported() {
        for (input, message) in [
            (
                quote!(
                    #[entity(name = "a", name = "b")]
                    struct A;
                ),
                "given twice",
            ),
            (
                quote!(
                    #[entity(nme = "a")]
                    struct A;
                ),
                "unknown `#[entity]` option",
            ),
            (
                quote!(
                    #[entity(name = "")]
                    struct A;
                ),
                "cannot be empty",
            ),
            (
                quote!(
                    #[entity(name = 3)]
                    struct A;
                ),
                "expected string literal",
            ),
            (quote!(#[entity(name = "u")] union U { a: u8 }), "unions"),
        ] {
            let out = expand_str(input);
            assert!(out.contains(message), "expected {message:?} in {out}");
        }
    }
}
