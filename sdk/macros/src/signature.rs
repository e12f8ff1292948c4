//! Signature checks and the worker-side glue shared by remote functions and actor methods:
//! what an argument and a return type may be, how arguments are decoded and results encoded.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type};

/// What a signature belongs to, for error messages.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    RemoteFn,
    ActorMethod,
    ActorConstructor,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Role::RemoteFn => "remote function",
            Role::ActorMethod => "actor method",
            Role::ActorConstructor => "actor constructor",
        }
    }
}

/// A `name: Type` argument (receiver excluded); `mut` is dropped from the name.
pub(crate) struct Arg {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

/// How the function's result becomes the value of its `ObjectRef`.
pub(crate) enum Output {
    /// No return type or `-> ()`: the value is `()`.
    Unit,
    /// Any other type, sent as is.
    Value(Type),
    /// `...Result<T, E>`: the value is `T`, an `Err` fails the call with its `{:#}` text.
    Result(Type),
}

impl Output {
    /// The `T` of the caller's `ObjectRef<T>` (or of the constructed actor).
    pub(crate) fn value_type(&self) -> TokenStream2 {
        match self {
            Output::Unit => quote!(()),
            Output::Value(ty) | Output::Result(ty) => quote!(#ty),
        }
    }
}

/// Rejects what a worker cannot call: generic, `unsafe` and variadic functions.
pub(crate) fn check_plain(sig: &Signature, role: Role) -> syn::Result<()> {
    let noun = role.noun();
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!(
                "generic {noun}s are not supported: the worker needs concrete types to decode \
                 arguments"
            ),
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            format!("{noun}s cannot be `unsafe`"),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            format!("{noun}s cannot be variadic"),
        ));
    }
    Ok(())
}

/// The typed arguments of `sig`, receiver skipped, each checked to be decodable.
pub(crate) fn typed_args(sig: &Signature, role: Role) -> syn::Result<Vec<Arg>> {
    let noun = role.noun();
    let mut args = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        let ident = match &*pat_type.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    format!("{noun} arguments must be plain `name: Type` patterns"),
                ));
            }
        };
        let ty = (*pat_type.ty).clone();
        if let Some(span) = find(&ty, |t| matches!(t, Type::ImplTrait(_))) {
            return Err(syn::Error::new(
                span,
                format!("`impl Trait` arguments are not supported in {noun}s; use a concrete type"),
            ));
        }
        if let Some(span) = find(&ty, |t| matches!(t, Type::Reference(_))) {
            return Err(syn::Error::new(
                span,
                format!("{noun} arguments must be owned (use String / Vec<T>)"),
            ));
        }
        args.push(Arg { ident, ty });
    }
    Ok(args)
}

/// Classifies the return type; references and `impl Trait` cannot travel back to the caller.
pub(crate) fn output(ret: &ReturnType, role: Role) -> syn::Result<Output> {
    let noun = role.noun();
    let ReturnType::Type(_, ty) = ret else {
        return Ok(Output::Unit);
    };
    if let Some(span) = find(ty, |t| matches!(t, Type::ImplTrait(_))) {
        return Err(syn::Error::new(
            span,
            format!("{noun}s cannot return `impl Trait`; return a concrete, serializable type"),
        ));
    }
    if let Some(span) = find(ty, |t| matches!(t, Type::Reference(_))) {
        return Err(syn::Error::new(
            span,
            format!("{noun}s must return owned values (the result is serialized)"),
        ));
    }
    let ty = peel(ty);
    if let Type::Tuple(tuple) = ty
        && tuple.elems.is_empty()
    {
        return Ok(Output::Unit);
    }
    if let Some(ok) = result_ok_type(ty)? {
        return Ok(Output::Result(ok));
    }
    Ok(Output::Value(ty.clone()))
}

/// `Some(T)` when the type's last path segment is `Result<T, ...>`.
pub(crate) fn result_ok_type(ty: &Type) -> syn::Result<Option<Type>> {
    let Type::Path(path) = peel(ty) else {
        return Ok(None);
    };
    let Some(last) = path.path.segments.last() else {
        return Ok(None);
    };
    if last.ident != "Result" {
        return Ok(None);
    }
    let first = match &last.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty.clone()),
            _ => None,
        }),
        _ => None,
    };
    match first {
        Some(ok) => Ok(Some(ok)),
        None => Err(syn::Error::new_spanned(
            ty,
            "cannot see the value type of this `Result`; write it as `Result<T, E>`",
        )),
    }
}

/// Strips `( )` and the invisible groups macro_rules wraps around `$t:ty`.
pub(crate) fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => peel(&group.elem),
        Type::Paren(paren) => peel(&paren.elem),
        other => other,
    }
}

/// The span of the first type inside `ty` (itself included) that matches `pred`.
fn find(ty: &Type, pred: fn(&Type) -> bool) -> Option<Span> {
    struct Finder {
        pred: fn(&Type) -> bool,
        found: Option<Span>,
    }
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type(&mut self, ty: &'ast Type) {
            if self.found.is_none() && (self.pred)(ty) {
                self.found = Some(ty.span());
            }
            syn::visit::visit_type(self, ty);
        }
    }
    let mut finder = Finder { pred, found: None };
    finder.visit_type(ty);
    finder.found
}

/// Replaces `Self` with `actor` so the types can be used outside the actor's impl block.
pub(crate) fn replace_self(ty: &mut Type, actor: &Type) {
    struct Replacer<'a>(&'a Type);
    impl VisitMut for Replacer<'_> {
        fn visit_type_mut(&mut self, ty: &mut Type) {
            if let Type::Path(path) = ty
                && path.qself.is_none()
                && path.path.is_ident("Self")
            {
                *ty = self.0.clone();
                return;
            }
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
    Replacer(actor).visit_type_mut(ty);
}

/// `base`, or `base` with a `photon_` prefix when an argument already has that name: the
/// generated callers put `ctx` / `options` next to the user's own arguments.
pub(crate) fn fresh_ident(base: &str, args: &[Arg]) -> Ident {
    let mut name = base.to_owned();
    while args.iter().any(|arg| arg.ident == name) {
        name = format!("photon_{name}");
    }
    Ident::new(&name, Span::call_site())
}

/// Caller-side parameters `name: impl ::photon::IntoArg<Type>` and the matching argument list
/// `::photon::IntoArg::<Type>::into_arg(name)`.
pub(crate) fn caller_params(args: &[Arg]) -> (Vec<TokenStream2>, Vec<TokenStream2>) {
    let params = args
        .iter()
        .map(|Arg { ident, ty }| quote!(#ident: impl ::photon::IntoArg<#ty>))
        .collect();
    let into_args = args
        .iter()
        .map(|Arg { ident, ty }| quote!(::photon::IntoArg::<#ty>::into_arg(#ident)))
        .collect();
    (params, into_args)
}

/// Worker-side statements for an `async move` block that owns `args`: check the count, decode
/// each argument into a local, then drop the raw bytes. Returns the statements and locals.
///
/// `owner` is a string-literal suffix such as `"::add"` or `"::Counter::incr"`; the messages read
/// "argument `a` of my_crate::add" because `module_path!()` is expanded where the macro was used.
pub(crate) fn decode_args(args: &[Arg], owner: &str) -> (TokenStream2, Vec<Ident>) {
    let count = args.len();
    let locals: Vec<Ident> = (0..count)
        .map(|i| format_ident!("__photon_arg_{}", i))
        .collect();
    let decodes = args
        .iter()
        .zip(&locals)
        .enumerate()
        .map(|(index, (arg, local))| {
            let ty = &arg.ty;
            let what = format!("argument `{}` of ", arg.ident);
            // Record batches travel as Arrow IPC and are read zero-copy, not through serde.
            let decode = if is_record_batch(ty) {
                quote!(decode_batch)
            } else {
                quote!(decode)
            };
            quote! {
                let #local: #ty = ::photon::__private::#decode(
                    &args[#index],
                    ::std::concat!(#what, ::std::module_path!(), #owner),
                )?;
            }
        });
    let stmts = quote! {
        ::photon::__private::check_arity(
            &args,
            #count,
            ::std::concat!(::std::module_path!(), #owner),
        )?;
        #(#decodes)*
        ::std::mem::drop(args);
    };
    (stmts, locals)
}

/// True for a type named `RecordBatch` (e.g. `arrow::array::RecordBatch`):
/// such values are encoded as Arrow IPC instead of serde.
pub(crate) fn is_record_batch(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "RecordBatch"))
}

/// The expression turning the result of `call` into `Result<Vec<u8>, String>`.
/// The serializer of one value of type `ty`.
fn encoder(ty: &Type) -> TokenStream2 {
    if is_record_batch(ty) {
        quote!(::photon::__private::encode_batch)
    } else {
        quote!(::photon::__private::encode)
    }
}

/// The value types of a call's returns: the output's value alone, or, with `num_returns` =
/// n > 1, the n elements of the tuple it must be.
pub(crate) fn return_types(
    output: &Output,
    num_returns: u32,
    noun: &str,
) -> syn::Result<Vec<Type>> {
    let value: Type = syn::parse2(output.value_type())?;
    if num_returns == 1 {
        return Ok(vec![value]);
    }
    match peel(&value) {
        Type::Tuple(tuple) if tuple.elems.len() == num_returns as usize => {
            Ok(tuple.elems.iter().cloned().collect())
        }
        _ => Err(syn::Error::new_spanned(
            &value,
            format!(
                "a {noun} with num_returns = {num_returns} must return a {num_returns}-tuple (or a \
                 `Result` of one), each element becoming its own object"
            ),
        )),
    }
}

/// What the caller gets: `ObjectRef<T>`, or a tuple of refs for several returns.
pub(crate) fn caller_returns(types: &[Type]) -> TokenStream2 {
    match types {
        [one] => quote!(::photon::ObjectRef<#one>),
        many => quote!((#(::photon::ObjectRef<#many>,)*)),
    }
}

/// Like [`encode_output`] for a call with several returns: each tuple element encoded on its
/// own, framed together.
pub(crate) fn encode_outputs(output: &Output, types: &[Type], call: TokenStream2) -> TokenStream2 {
    if types.len() == 1 {
        return encode_output(output, call);
    }
    let values: Vec<Ident> = (0..types.len())
        .map(|i| format_ident!("__photon_return_{i}"))
        .collect();
    let encoders = types.iter().map(encoder);
    let framed = quote! {
        ::photon::__private::encode_returns(::std::vec![#(#encoders(&#values)),*])
    };
    match output {
        Output::Result(_) => quote! {
            match #call {
                ::std::result::Result::Ok((#(#values,)*)) => #framed,
                ::std::result::Result::Err(error) => {
                    ::std::result::Result::Err(::std::format!("{error:#}"))
                }
            }
        },
        _ => quote! {{
            let (#(#values,)*) = #call;
            #framed
        }},
    }
}

pub(crate) fn encode_output(output: &Output, call: TokenStream2) -> TokenStream2 {
    let encode = encoder;
    match output {
        Output::Unit => quote! {{
            #call;
            ::photon::__private::encode(&())
        }},
        Output::Value(ty) => {
            let encode = encode(ty);
            quote!(#encode(&#call))
        }
        Output::Result(ty) => {
            let encode = encode(ty);
            quote! {
            match #call {
                ::std::result::Result::Ok(value) => #encode(&value),
                ::std::result::Result::Err(error) => {
                    ::std::result::Result::Err(::std::format!("{error:#}"))
                }
            }
            }
        }
    }
}

/// `call` of `sig`'s function as the worker runs it: awaited if it is
/// `async`; otherwise through `run_blocking`, so that a long synchronous
/// body does not hold up the tasks queued on its runtime thread (the reply
/// of the call before it among them).
pub(crate) fn invoke(sig: &Signature, call: TokenStream2) -> TokenStream2 {
    if sig.asyncness.is_some() {
        quote!(#call.await)
    } else {
        quote!(::photon::__private::run_blocking(|| #call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn sig(item: syn::ItemFn) -> Signature {
        item.sig
    }

    fn out_type(ret: ReturnType) -> String {
        output(&ret, Role::RemoteFn)
            .unwrap()
            .value_type()
            .to_string()
            .replace(' ', "")
    }

    #[test]
    fn result_types_unwrap_to_their_first_argument() {
        assert_eq!(out_type(parse_quote!(-> Result<u64, String>)), "u64");
        assert_eq!(
            out_type(parse_quote!(-> anyhow::Result<Vec<u8>>)),
            "Vec<u8>"
        );
        assert_eq!(out_type(parse_quote!(-> std::io::Result<()>)), "()");
        assert_eq!(out_type(parse_quote!(-> Option<u64>)), "Option<u64>");
        assert_eq!(out_type(parse_quote!(-> ())), "()");
        assert_eq!(out_type(ReturnType::Default), "()");
        assert!(matches!(
            output(&parse_quote!(-> io::Result<u8>), Role::RemoteFn).unwrap(),
            Output::Result(_)
        ));
        let err = output(&parse_quote!(-> Result), Role::RemoteFn)
            .err()
            .unwrap();
        assert!(err.to_string().contains("write it as `Result<T, E>`"));
    }

    #[test]
    fn returns_must_be_owned_and_concrete() {
        let err = output(&parse_quote!(-> &'static str), Role::RemoteFn)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "remote functions must return owned values (the result is serialized)"
        );
        let err = output(
            &parse_quote!(-> impl Iterator<Item = u8>),
            Role::ActorMethod,
        );
        assert!(
            err.err()
                .unwrap()
                .to_string()
                .contains("actor methods cannot return `impl Trait`")
        );
    }

    #[test]
    fn arguments_must_be_owned_named_and_concrete() {
        let noun_err = |item: syn::ItemFn| typed_args(&sig(item), Role::RemoteFn).err().unwrap();
        assert_eq!(
            noun_err(parse_quote!(
                fn f(s: &str) {}
            ))
            .to_string(),
            "remote function arguments must be owned (use String / Vec<T>)"
        );
        assert_eq!(
            noun_err(parse_quote!(
                fn f(s: Vec<&[u8]>) {}
            ))
            .to_string(),
            "remote function arguments must be owned (use String / Vec<T>)"
        );
        assert!(
            noun_err(parse_quote!(
                fn f(s: impl Into<String>) {}
            ))
            .to_string()
            .contains("`impl Trait` arguments are not supported")
        );
        for item in [
            parse_quote!(
                fn f((a, b): (u8, u8)) {}
            ),
            parse_quote!(
                fn f(_: u8) {}
            ),
            parse_quote!(
                fn f(ref a: u8) {}
            ),
        ] {
            assert_eq!(
                noun_err(item).to_string(),
                "remote function arguments must be plain `name: Type` patterns"
            );
        }
        let args = typed_args(
            &sig(parse_quote!(
                fn f(mut a: u8, b: String) {}
            )),
            Role::RemoteFn,
        );
        let names: Vec<_> = args.unwrap().iter().map(|a| a.ident.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn generic_and_unsafe_signatures_are_rejected() {
        let err = check_plain(
            &sig(parse_quote!(
                fn f<T>(a: T) {}
            )),
            Role::RemoteFn,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("generic remote functions are not supported")
        );
        let err = check_plain(
            &sig(parse_quote!(
                fn f(a: u8)
                where
                    u8: Copy,
                {
                }
            )),
            Role::ActorMethod,
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .starts_with("generic actor methods")
        );
        let err = check_plain(
            &sig(parse_quote!(
                unsafe fn f() {}
            )),
            Role::RemoteFn,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "remote functions cannot be `unsafe`");
    }

    #[test]
    fn self_is_replaced_at_any_depth() {
        let actor: Type = parse_quote!(Counter);
        let mut ty: Type = parse_quote!(Vec<(Self, Option<Self>)>);
        replace_self(&mut ty, &actor);
        assert_eq!(
            quote!(#ty).to_string(),
            quote!(Vec<(Counter, Option<Counter>)>).to_string()
        );
    }

    #[test]
    fn generated_parameter_names_avoid_user_names() {
        let args = typed_args(
            &sig(parse_quote!(
                fn f(ctx: u8, other: u8) {}
            )),
            Role::RemoteFn,
        );
        let args = args.unwrap();
        assert_eq!(fresh_ident("ctx", &args), "photon_ctx");
        assert_eq!(fresh_ident("options", &args), "options");
    }
}
