//! What a `#[controller]` trait says, checked: its actions, their parameters and return types.
//!
//! Parsing collects every mistake it finds (not just the first), each as a `syn::Error` spanned
//! at the user's offending tokens.

use std::collections::HashMap;

use proc_macro2::Span;
use quote::quote;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, PathArguments, ReturnType,
    TraitItem, TraitItemFn, Type,
};

use super::attrs::{ActionOptions, is_action_attr};

/// A checked `#[controller]` trait.
pub struct Controller {
    /// The wire name, from `#[controller("...")]`.
    pub name: LitStr,
    /// The trait as written, `#[action]` attributes removed.
    pub item: ItemTrait,
    /// The actions, in declaration order: an action's index is its position here.
    pub actions: Vec<Action>,
}

/// One method of the trait.
pub struct Action {
    /// The trait method as written, `#[action]` attributes removed.
    pub method: TraitItemFn,
    /// The name on the wire: `#[action(name = "..")]`, else the method's name.
    pub wire_name: LitStr,
    pub groups: Vec<LitStr>,
    pub data: Vec<(LitStr, LitStr)>,
    /// The parameters after `&self`, in order.
    pub params: Vec<Param>,
    pub output: Output,
}

pub struct Param {
    pub ident: Ident,
    pub ty: Type,
    pub kind: ParamKind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParamKind {
    /// Sent by the client, decoded from the arguments array.
    Value,
    /// `&Context`: injected by the server, absent from the client.
    Context,
    /// `RpcStream<T>`: a stream the client sends alongside the arguments.
    Stream,
}

/// How the answer of an action travels, read from its return type.
pub enum Output {
    /// No return type (or `()`).
    Unit,
    /// Any other type: replied as a value.
    Value(Type),
    /// `Result<T, E>`: `T`, or the typed error `E`.
    Result { full: Type, ok: Type },
    /// `RpcStream<T>`.
    Stream(Type),
    /// `Result<RpcStream<T>, E>`.
    StreamResult { full: Type, stream: Type },
}

/// The four `rpc_core::ActionKind`s.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Unary,
    ServerStream,
    ClientStream,
    Bidi,
}

impl Kind {
    pub fn variant(self) -> Ident {
        let name = match self {
            Kind::Unary => "Unary",
            Kind::ServerStream => "ServerStream",
            Kind::ClientStream => "ClientStream",
            Kind::Bidi => "Bidi",
        };
        Ident::new(name, Span::call_site())
    }
}

impl Output {
    /// The type the trait method's future resolves to.
    pub fn trait_type(&self) -> proc_macro2::TokenStream {
        match self {
            Output::Unit => quote!(()),
            Output::Value(ty) | Output::Stream(ty) => quote!(#ty),
            Output::Result { full, .. } | Output::StreamResult { full, .. } => quote!(#full),
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Output::Stream(_) | Output::StreamResult { .. })
    }

    /// The span errors about the return type point at.
    pub fn span(&self, method: &TraitItemFn) -> Span {
        match &method.sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => method.sig.ident.span(),
        }
    }
}

impl Action {
    pub fn ident(&self) -> &Ident {
        &self.method.sig.ident
    }

    pub fn kind(&self) -> Kind {
        let client_streams = self.stream_param().is_some();
        match (client_streams, self.output.is_stream()) {
            (false, false) => Kind::Unary,
            (false, true) => Kind::ServerStream,
            (true, false) => Kind::ClientStream,
            (true, true) => Kind::Bidi,
        }
    }

    /// The parameters the client sends in the arguments array.
    pub fn value_params(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.kind == ParamKind::Value)
    }

    /// The `RpcStream<T>` parameter, if the client streams.
    pub fn stream_param(&self) -> Option<&Param> {
        self.params.iter().find(|p| p.kind == ParamKind::Stream)
    }

    /// The attributes that document the action (`///` comments), for the client's method.
    pub fn docs(&self) -> impl Iterator<Item = &Attribute> {
        self.method.attrs.iter().filter(|attr| attr.path().is_ident("doc"))
    }
}

/// Collects errors so a user sees every mistake in one build.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn spanned<T: quote::ToTokens>(&mut self, tokens: T, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Names the generated client defines itself: an action cannot take them.
const RESERVED_CLIENT_METHODS: &[&str] = &["with_timeout", "from_target"];

/// A trait with mistakes: every error found, and the trait to emit beside them (so code using
/// it still resolves, and the user sees the real mistakes rather than a cascade).
pub struct Invalid {
    pub error: syn::Error,
    pub item: Box<ItemTrait>,
}

/// Checks the trait and reads its actions. `item` keeps its `#[action]` attributes; the returned
/// [`Controller::item`] has them removed.
pub fn parse(name: LitStr, mut item: ItemTrait) -> Result<Controller, Invalid> {
    let mut errors = Errors::default();
    let original = item.clone();
    strip_action_attrs(&mut item);

    if let Some(unsafety) = &item.unsafety {
        errors.spanned(unsafety, "a controller trait cannot be `unsafe`");
    }
    if let Some(auto) = &item.auto_token {
        errors.spanned(auto, "a controller trait cannot be an `auto` trait");
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(&item.generics, "a controller trait cannot be generic");
    }

    let mut actions = Vec::new();
    for trait_item in &original.items {
        let method = match trait_item {
            TraitItem::Fn(method) => method,
            other => {
                errors.spanned(
                    other,
                    "a controller trait holds only actions: `async fn name(&self, ..)`",
                );
                continue;
            }
        };
        match parse_action(method) {
            Ok(action) => actions.push(action),
            Err(error) => errors.push(error),
        }
    }

    check_unique_names(&actions, &mut errors);

    match errors.finish() {
        Ok(()) => Ok(Controller { name, item, actions }),
        Err(error) => {
            quiet_patterns(&mut item);
            Err(Invalid { error, item: Box::new(item) })
        }
    }
}

/// In methods without a body, turns the patterns the compiler would reject on its own
/// (`(a, b): T`, `mut a: T`) into `_` / `a`, so that a misuse shows our error only.
fn quiet_patterns(item: &mut ItemTrait) {
    for trait_item in &mut item.items {
        let TraitItem::Fn(method) = trait_item else {
            continue;
        };
        if method.default.is_some() {
            continue;
        }
        for input in &mut method.sig.inputs {
            let FnArg::Typed(typed) = input else { continue };
            match &mut *typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() => {
                    pat.mutability = None;
                    pat.by_ref = None;
                }
                Pat::Wild(_) => {}
                pat => {
                    *pat = Pat::Wild(syn::PatWild {
                        attrs: Vec::new(),
                        underscore_token: Default::default(),
                    })
                }
            }
        }
    }
}

/// Removes every `#[action]` attribute from the trait's methods.
fn strip_action_attrs(item: &mut ItemTrait) {
    for trait_item in &mut item.items {
        if let TraitItem::Fn(method) = trait_item {
            method.attrs.retain(|attr| !is_action_attr(attr));
        }
    }
}

fn check_unique_names(actions: &[Action], errors: &mut Errors) {
    let mut seen: HashMap<String, &Action> = HashMap::new();
    for action in actions {
        let wire = action.wire_name.value();
        if let Some(first) = seen.get(&wire) {
            errors.spanned(
                &action.wire_name,
                format!(
                    "two actions share the wire name `{wire}`: `{}` and `{}`",
                    first.ident(),
                    action.ident()
                ),
            );
        } else {
            seen.insert(wire, action);
        }
    }
}

/// Reads one method; `method` still carries its `#[action]` attributes.
fn parse_action(method: &TraitItemFn) -> syn::Result<Action> {
    let mut errors = Errors::default();
    let sig = &method.sig;

    let mut options = ActionOptions::default();
    for attr in method.attrs.iter().filter(|attr| is_action_attr(attr)) {
        if let Err(error) = options.parse_attr(attr) {
            errors.push(error);
        }
    }
    if let Some(attr) = method.attrs.iter().find(|attr| attr.path().is_ident("cfg")) {
        errors.spanned(
            attr,
            "`#[cfg]` on an action is not supported: an action's index must not depend on features",
        );
    }

    if sig.asyncness.is_none() {
        let fn_token = &sig.fn_token;
        let ident = &sig.ident;
        errors.spanned(quote!(#fn_token #ident), "actions must be `async fn`");
    }
    if let Some(constness) = &sig.constness {
        errors.spanned(constness, "actions cannot be `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(unsafety, "actions cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "actions cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "actions cannot be generic: every argument and return type must be concrete to cross the wire",
        );
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.spanned(where_clause, "actions cannot have a `where` clause");
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "actions cannot be variadic");
    }
    if RESERVED_CLIENT_METHODS.iter().any(|reserved| sig.ident == reserved) {
        errors.spanned(
            &sig.ident,
            format!("`{}` is a method of the generated client: rename the action, or keep the wire name with #[action(name = \"{}\")]", sig.ident, sig.ident),
        );
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => {
            if let Err(error) = check_receiver(receiver) {
                errors.push(error);
            }
        }
        _ => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "actions take `&self` as their first parameter",
        )),
    }
    // Without a receiver, the first input is a parameter too.
    let rest = if matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        inputs.collect::<Vec<_>>()
    } else {
        sig.inputs.iter().collect()
    };

    let mut params = Vec::new();
    for input in rest {
        let FnArg::Typed(typed) = input else { continue };
        match parse_param(typed) {
            Ok(param) => params.push(param),
            Err(error) => errors.push(error),
        }
    }
    check_param_counts(&params, &mut errors);

    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => classify_output(ty),
    };

    errors.finish()?;
    let mut method = method.clone();
    method.attrs.retain(|attr| !is_action_attr(attr));
    let wire_name = options
        .name
        .unwrap_or_else(|| LitStr::new(&sig.ident.unraw().to_string(), sig.ident.span()));
    Ok(Action { method, wire_name, groups: options.groups, data: options.data, params, output })
}

fn check_receiver(receiver: &syn::Receiver) -> syn::Result<()> {
    const SHARED: &str =
        "actions take `&self`: a controller is shared by every connection; use interior mutability";
    let by_shared_ref = match &*receiver.ty {
        Type::Reference(reference) => {
            reference.mutability.is_none() && is_self_type(&reference.elem)
        }
        _ => false,
    };
    if receiver.mutability.is_some() || !by_shared_ref {
        return Err(syn::Error::new_spanned(receiver, SHARED));
    }
    Ok(())
}

fn is_self_type(ty: &Type) -> bool {
    matches!(unwrap_groups(ty), Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self"))
}

fn parse_param(typed: &syn::PatType) -> syn::Result<Param> {
    let ident = match &*typed.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
        pat => {
            return Err(syn::Error::new_spanned(
                pat,
                "action parameters are plain names (`title: String`): the name labels the argument in errors",
            ));
        }
    };
    let ty = (*typed.ty).clone();
    let kind = if is_context(&ty) {
        ParamKind::Context
    } else if last_segment_is(&ty, "RpcStream").is_some() {
        ParamKind::Stream
    } else {
        ParamKind::Value
    };

    match unwrap_groups(&ty) {
        Type::Reference(_) if kind == ParamKind::Context => {}
        Type::Reference(reference) if last_segment_is(&reference.elem, "Context").is_some() => {
            return Err(syn::Error::new_spanned(
                &ty,
                "the context is shared by the whole call: take `&Context`, not `&mut Context`",
            ));
        }
        Type::Reference(_) => {
            return Err(syn::Error::new_spanned(
                &ty,
                "action arguments are decoded into owned values: take an owned type (e.g. `String`, `Vec<T>`), not a reference",
            ));
        }
        Type::ImplTrait(_) => {
            return Err(syn::Error::new_spanned(
                &ty,
                "actions cannot be generic: `impl Trait` arguments do not cross the wire",
            ));
        }
        _ if last_segment_is(&ty, "Context").is_some() => {
            return Err(syn::Error::new_spanned(
                &ty,
                "the context is passed by reference: `ctx: &Context`",
            ));
        }
        _ => {}
    }
    if ident == "ctx" && kind != ParamKind::Context {
        return Err(syn::Error::new_spanned(
            &ty,
            "`ctx` names the connection's context: its type must be `&Context` (or rename the parameter)",
        ));
    }
    Ok(Param { ident, ty, kind })
}

fn check_param_counts(params: &[Param], errors: &mut Errors) {
    for (kind, message) in [
        (ParamKind::Context, "an action takes at most one `&Context` parameter"),
        (
            ParamKind::Stream,
            "an action takes at most one `RpcStream` parameter: the client sends one stream per call",
        ),
    ] {
        for extra in params.iter().filter(|p| p.kind == kind).skip(1) {
            errors.spanned(&extra.ty, message);
        }
    }
}

/// Reads a return type: streams and `Result`s by the last segment of their path.
fn classify_output(ty: &Type) -> Output {
    if let Type::Tuple(tuple) = unwrap_groups(ty)
        && tuple.elems.is_empty()
    {
        return Output::Unit;
    }
    if last_segment_is(ty, "RpcStream").is_some() {
        return Output::Stream(ty.clone());
    }
    if let Some(args) = last_segment_is(ty, "Result").and_then(type_args)
        && let [ok, _err] = args.as_slice()
    {
        let ok = (*ok).clone();
        return if last_segment_is(&ok, "RpcStream").is_some() {
            Output::StreamResult { full: ty.clone(), stream: ok }
        } else {
            Output::Result { full: ty.clone(), ok }
        };
    }
    Output::Value(ty.clone())
}

/// The type inside invisible groups (from `macro_rules!` fragments) and parentheses.
fn unwrap_groups(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// The last segment of `ty`'s path if it is named `name`.
fn last_segment_is<'a>(ty: &'a Type, name: &str) -> Option<&'a syn::PathSegment> {
    match unwrap_groups(ty) {
        Type::Path(path) => path.path.segments.last().filter(|segment| segment.ident == name),
        _ => None,
    }
}

/// The generic type arguments of a path segment: `Result<A, B>` gives `[A, B]`.
fn type_args(segment: &syn::PathSegment) -> Option<Vec<&Type>> {
    match &segment.arguments {
        PathArguments::AngleBracketed(args) => Some(
            args.args
                .iter()
                .filter_map(|arg| match arg {
                    GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// `&Context` (any path ending in `Context`, behind a shared reference).
fn is_context(ty: &Type) -> bool {
    match unwrap_groups(ty) {
        Type::Reference(reference) => {
            reference.mutability.is_none() && last_segment_is(&reference.elem, "Context").is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn action(method: TraitItemFn) -> syn::Result<Action> {
        parse_action(&method)
    }

    fn error_of(method: TraitItemFn) -> String {
        match parse_action(&method) {
            Ok(_) => panic!("`{}` parsed", quote!(#method)),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn classifies_outputs() {
        let cases: Vec<(Type, &str)> = vec![
            (parse_quote!(()), "unit"),
            (parse_quote!(String), "value"),
            (parse_quote!(RpcStream<u64>), "stream"),
            (parse_quote!(::rpc_core::RpcStream<u64>), "stream"),
            (parse_quote!(Result<User, CannotSaveUser>), "result"),
            (parse_quote!(std::result::Result<(), E>), "result"),
            (parse_quote!(Result<RpcStream<u8>, E>), "stream-result"),
            (parse_quote!(io::Result<u8>), "value"),
            (parse_quote!((Result<u8, E>)), "result"),
        ];
        for (ty, expected) in cases {
            let got = match classify_output(&ty) {
                Output::Unit => "unit",
                Output::Value(_) => "value",
                Output::Stream(_) => "stream",
                Output::Result { .. } => "result",
                Output::StreamResult { .. } => "stream-result",
            };
            assert_eq!(got, expected, "{}", quote!(#ty));
        }
    }

    #[test]
    fn reads_params_and_kind() {
        let a = action(parse_quote! {
            #[action(name = "up", group = "g", data(k = "v"))]
            async fn upload(&self, ctx: &Context, name: String, chunks: RpcStream<Vec<u8>>) -> RpcStream<u64>;
        })
        .unwrap();
        assert_eq!(a.wire_name.value(), "up");
        assert_eq!(a.kind(), Kind::Bidi);
        let kinds: Vec<_> = a.params.iter().map(|p| (p.ident.to_string(), p.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("ctx".to_string(), ParamKind::Context),
                ("name".to_string(), ParamKind::Value),
                ("chunks".to_string(), ParamKind::Stream)
            ]
        );
        assert!(a.method.attrs.is_empty(), "#[action] is stripped");

        let a = action(parse_quote!(
            async fn r#type(&self, c: &rpc_core::Context);
        ))
        .unwrap();
        assert_eq!(a.wire_name.value(), "type");
        assert_eq!(a.kind(), Kind::Unary);
        assert_eq!(a.params[0].kind, ParamKind::Context);

        let a = action(parse_quote!(
            async fn up(&self, s: RpcStream<u8>) -> Result<u32, E>;
        ))
        .unwrap();
        assert_eq!(a.kind(), Kind::ClientStream);
        let a = action(parse_quote!(
            async fn down(&self) -> Result<RpcStream<u8>, E>;
        ))
        .unwrap();
        assert_eq!(a.kind(), Kind::ServerStream);
    }

    #[test]
    fn rejects_misuse() {
        let cases: Vec<(TraitItemFn, &str)> = vec![
            (
                parse_quote!(
                    fn f(&self);
                ),
                "actions must be `async fn`",
            ),
            (
                parse_quote!(
                    async fn f(&mut self);
                ),
                "actions take `&self`: a controller is shared",
            ),
            (
                parse_quote!(
                    async fn f(self);
                ),
                "actions take `&self`",
            ),
            (
                parse_quote!(
                    async fn f(self: Box<Self>);
                ),
                "actions take `&self`",
            ),
            (
                parse_quote!(
                    async fn f(x: u8);
                ),
                "actions take `&self` as their first parameter",
            ),
            (
                parse_quote!(
                    async fn f();
                ),
                "actions take `&self` as their first parameter",
            ),
            (
                parse_quote!(
                    async fn f<T>(&self, x: T);
                ),
                "actions cannot be generic",
            ),
            (
                parse_quote!(
                    async fn f<'a>(&'a self);
                ),
                "actions cannot be generic",
            ),
            (
                parse_quote!(
                    async fn f(&self, x: impl Sized);
                ),
                "actions cannot be generic",
            ),
            (
                parse_quote!(
                    async fn f(&self)
                    where
                        Self: Sized;
                ),
                "`where` clause",
            ),
            (
                parse_quote!(
                    async unsafe fn f(&self);
                ),
                "cannot be `unsafe`",
            ),
            (
                parse_quote!(
                    async fn f(&self, (a, b): (u8, u8));
                ),
                "plain names",
            ),
            (
                parse_quote!(
                    async fn f(&self, _: u8);
                ),
                "plain names",
            ),
            (
                parse_quote!(
                    async fn f(&self, ref a: u8);
                ),
                "plain names",
            ),
            (
                parse_quote!(
                    async fn f(&self, a: &str);
                ),
                "owned values",
            ),
            (
                parse_quote!(
                    async fn f(&self, ctx: Context);
                ),
                "passed by reference",
            ),
            (
                parse_quote!(
                    async fn f(&self, ctx: &mut Context);
                ),
                "not `&mut Context`",
            ),
            (
                parse_quote!(
                    async fn f(&self, ctx: String);
                ),
                "its type must be `&Context`",
            ),
            (
                parse_quote!(
                    async fn f(&self, a: &Context, b: &Context);
                ),
                "at most one `&Context`",
            ),
            (
                parse_quote!(
                    async fn f(&self, a: RpcStream<u8>, b: RpcStream<u8>);
                ),
                "at most one `RpcStream`",
            ),
            (
                parse_quote!(
                    async fn with_timeout(&self);
                ),
                "method of the generated client",
            ),
            (
                parse_quote!(
                    #[cfg(test)]
                    async fn f(&self);
                ),
                "`#[cfg]` on an action",
            ),
            (
                parse_quote!(
                    #[action(nme = "x")]
                    async fn f(&self);
                ),
                "unknown `#[action]` option",
            ),
        ];
        for (method, expected) in cases {
            let error = error_of(method.clone());
            assert!(
                error.contains(expected),
                "`{}`: expected {expected:?}, got {error:?}",
                quote!(#method)
            );
        }
    }

    #[test]
    fn reports_every_mistake() {
        let error = error_of(parse_quote!(
            fn f<T>(&mut self, _: u8);
        ));
        assert_eq!(error.lines().count(), 4, "{error}");
    }

    #[test]
    fn mut_params_are_plain_names() {
        let a = action(parse_quote!(
            async fn f(&self, mut x: u8);
        ))
        .unwrap();
        assert_eq!(a.params[0].ident, "x");
    }

    #[test]
    fn duplicate_wire_names() {
        let item: ItemTrait = parse_quote! {
            trait T {
                async fn a(&self);
                #[action(name = "a")]
                async fn b(&self);
                type X;
            }
        };
        let Invalid { error, item: stripped } = parse(parse_quote!("t"), item).err().unwrap();
        let messages: Vec<_> = error.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("holds only actions"), "{messages:?}");
        assert!(messages[1].contains("share the wire name `a`: `a` and `b`"), "{messages:?}");
        let stripped = quote!(#stripped).to_string();
        assert!(!stripped.contains("action"), "{stripped}");
    }
}
