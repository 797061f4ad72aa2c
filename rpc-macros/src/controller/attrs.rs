//! The arguments of `#[controller("name")]` and of `#[action(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, LitStr, Token};

const EXPECTED_NAME: &str = "expected the controller's wire name: #[controller(\"users\")]";

/// Parses the argument of `#[controller("users")]`: one non-empty string literal.
pub fn controller_name(attr: TokenStream) -> syn::Result<LitStr> {
    if attr.is_empty() {
        // An attribute macro's call site is the `#[controller]` attribute itself.
        return Err(syn::Error::new(Span::call_site(), EXPECTED_NAME));
    }
    let parser = |input: ParseStream| {
        let name: LitStr = input.parse().map_err(|e| syn::Error::new(e.span(), EXPECTED_NAME))?;
        let _: Option<Token![,]> = input.parse()?;
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the controller's name"));
        }
        Ok(name)
    };
    let name = parser.parse2(attr)?;
    if name.value().is_empty() {
        return Err(syn::Error::new_spanned(&name, "the controller's wire name cannot be empty"));
    }
    Ok(name)
}

/// Whether `attr` is an `#[action(...)]` (also written `#[rpc_core::action(...)]`).
pub fn is_action_attr(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|segment| segment.ident == "action")
}

/// The options of an action, gathered from all of its `#[action(...)]` attributes.
#[derive(Default)]
pub struct ActionOptions {
    /// `name = ".."`: the wire name, if it differs from the method's name.
    pub name: Option<LitStr>,
    /// `group = ".."`, in the order given.
    pub groups: Vec<LitStr>,
    /// `data(key = "value", ..)`, in the order given.
    pub data: Vec<(LitStr, LitStr)>,
}

impl ActionOptions {
    /// Reads the options of one `#[action(...)]` attribute into `self`.
    pub fn parse_attr(&mut self, attr: &Attribute) -> syn::Result<()> {
        if let syn::Meta::Path(_) = attr.meta {
            return Ok(()); // a bare `#[action]` changes nothing
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().is_empty() {
                    return Err(syn::Error::new_spanned(&name, "an action's wire name cannot be empty"));
                }
                if self.name.is_some() {
                    return Err(meta.error("the action's `name` is given twice"));
                }
                self.name = Some(name);
            } else if meta.path.is_ident("group") {
                let group: LitStr = meta.value()?.parse()?;
                if group.value().is_empty() {
                    return Err(syn::Error::new_spanned(&group, "a group name cannot be empty"));
                }
                if self.groups.iter().any(|g| g.value() == group.value()) {
                    return Err(syn::Error::new_spanned(
                        &group,
                        format!("the action is already in group `{}`", group.value()),
                    ));
                }
                self.groups.push(group);
            } else if meta.path.is_ident("data") {
                let content;
                syn::parenthesized!(content in meta.input);
                let entries = Punctuated::<DataEntry, Token![,]>::parse_terminated(&content)?;
                for entry in entries {
                    if self.data.iter().any(|(key, _)| key.value() == entry.key.value()) {
                        return Err(syn::Error::new_spanned(
                            &entry.key,
                            format!("data key `{}` is given twice", entry.key.value()),
                        ));
                    }
                    self.data.push((entry.key, entry.value));
                }
            } else {
                return Err(meta.error(
                    "unknown `#[action]` option: expected `name = \"..\"`, `group = \"..\"` or `data(key = \"value\")`",
                ));
            }
            Ok(())
        })
    }
}

/// `key = "value"` inside `data(...)`; the key is an identifier (keywords too) or a string.
struct DataEntry {
    key: LitStr,
    value: LitStr,
}

impl Parse for DataEntry {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key = if input.peek(LitStr) {
            input.parse::<LitStr>()?
        } else if input.peek(Ident::peek_any) {
            let ident = input.call(Ident::parse_any)?;
            LitStr::new(&ident.unraw().to_string(), ident.span())
        } else {
            return Err(input.error("expected `key = \"value\"`"));
        };
        let _: Token![=] = input.parse()?;
        let value = input.parse::<LitStr>().map_err(|e| {
            syn::Error::new(e.span(), "data values are string literals: `key = \"value\"`")
        })?;
        Ok(DataEntry { key, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn options(attrs: TokenStream) -> syn::Result<ActionOptions> {
        let attrs = Attribute::parse_outer.parse2(attrs)?;
        let mut options = ActionOptions::default();
        for attr in &attrs {
            assert!(is_action_attr(attr));
            options.parse_attr(attr)?;
        }
        Ok(options)
    }

    fn values(lits: &[LitStr]) -> Vec<String> {
        lits.iter().map(LitStr::value).collect()
    }

    #[test]
    fn controller_name_is_a_string() {
        assert_eq!(controller_name(quote!("users")).unwrap().value(), "users");
        assert_eq!(controller_name(quote!("users",)).unwrap().value(), "users");
        for (attr, message) in [
            (quote!(), EXPECTED_NAME),
            (quote!(users), EXPECTED_NAME),
            (quote!(name = "users"), EXPECTED_NAME),
            (quote!(""), "cannot be empty"),
            (quote!("users", "more"), "unexpected tokens"),
        ] {
            let err =
                controller_name(attr.clone()).err().unwrap_or_else(|| panic!("{attr} parsed"));
            assert!(err.to_string().contains(message), "{attr}: {err}");
        }
    }

    #[test]
    fn all_options() {
        let o = options(quote! {
            #[action(name = "tick_stream", group = "a", group = "b", data(role = "admin", type = "x", "with space" = "y"))]
            #[rpc_core::action(group = "c")]
            #[action]
        })
        .unwrap();
        assert_eq!(o.name.unwrap().value(), "tick_stream");
        assert_eq!(values(&o.groups), ["a", "b", "c"]);
        let data: Vec<_> = o.data.iter().map(|(k, v)| (k.value(), v.value())).collect();
        assert_eq!(
            data,
            [
                ("role".into(), "admin".into()),
                ("type".into(), "x".into()),
                ("with space".into(), "y".into())
            ]
        );
    }

    #[test]
    fn misuse() {
        for (attrs, message) in [
            (quote!(#[action(name = "a", name = "b")]), "given twice"),
            (quote!(#[action(name = "a")] #[action(name = "b")]), "given twice"),
            (quote!(#[action(group = "a", group = "a")]), "already in group `a`"),
            (quote!(#[action(data(a = "1", a = "2"))]), "data key `a` is given twice"),
            (quote!(#[action(data(a = 1))]), "data values are string literals"),
            (quote!(#[action(data(a))]), "expected `=`"),
            (quote!(#[action(grop = "a")]), "unknown `#[action]` option"),
            (quote!(#[action(name = "")]), "cannot be empty"),
            (quote!(#[action(name = x)]), "expected string literal"),
        ] {
            let err = options(attrs.clone()).err().unwrap_or_else(|| panic!("{attrs} parsed"));
            assert!(err.to_string().contains(message), "{attrs}: {err}");
        }
    }
}
