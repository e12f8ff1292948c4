//! Attribute arguments of `#[remote]`, `#[actor]` and `#[method]`: parsed once here, turned
//! into a builder chain on `::photon::TaskOptions` / `ActorOptions` / `MethodOptions`, and
//! `num_returns`, which is part of the generated functions' types rather than an option.

use std::collections::HashSet;

use proc_macro2::{Literal, TokenStream as TokenStream2};
use quote::quote;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Lit, LitStr, Token, UnOp};

/// Which macro the arguments belong to; decides the accepted keys and the builder type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OptionsKind {
    Task,
    Actor,
    /// `#[photon::method(...)]` on a method inside an actor's impl block.
    Method,
}

/// Parsed attribute arguments.
pub(crate) struct Options {
    /// The expression building the default options.
    pub(crate) builder: TokenStream2,
    /// How many objects a call returns (`num_returns`, default 1).
    pub(crate) num_returns: u32,
}

/// The most returns a call may declare (as many as `photon::CallReturns` has tuples for).
const MAX_RETURNS: u32 = 8;

/// The value type a key's builder method takes.
#[derive(Clone, Copy)]
enum ValueKind {
    /// `f64`, written as an integer or float literal, at least zero.
    Amount,
    /// `u32`, written as an integer literal.
    Count,
    /// `u32`, at least one.
    PositiveCount,
    Bool,
    /// `num_returns`: 1 to `MAX_RETURNS`, kept out of the builder.
    Returns,
}

impl OptionsKind {
    fn keys(self) -> &'static [(&'static str, ValueKind)] {
        match self {
            OptionsKind::Task => &[
                ("num_cpus", ValueKind::Amount),
                ("num_gpus", ValueKind::Amount),
                ("max_retries", ValueKind::Count),
                ("retry_exceptions", ValueKind::Bool),
                ("num_returns", ValueKind::Returns),
            ],
            OptionsKind::Actor => &[
                ("num_cpus", ValueKind::Amount),
                ("num_gpus", ValueKind::Amount),
                ("max_restarts", ValueKind::Count),
                ("max_concurrency", ValueKind::PositiveCount),
            ],
            OptionsKind::Method => &[
                ("max_retries", ValueKind::Count),
                ("num_returns", ValueKind::Returns),
            ],
        }
    }

    fn macro_name(self) -> &'static str {
        match self {
            OptionsKind::Task => "#[photon::remote]",
            OptionsKind::Actor => "#[photon::actor]",
            OptionsKind::Method => "#[photon::method]",
        }
    }

    fn builder(self) -> TokenStream2 {
        match self {
            OptionsKind::Task => quote!(::photon::TaskOptions),
            OptionsKind::Actor => quote!(::photon::ActorOptions),
            OptionsKind::Method => quote!(::photon::MethodOptions),
        }
    }
}

/// One `key = value` or `resources(...)` entry, still unchecked.
enum RawArg {
    Value {
        key: Ident,
        value: Expr,
    },
    Resources {
        key: Ident,
        entries: Punctuated<RawResource, Token![,]>,
    },
}

/// `name = amount` inside `resources(...)`; the name is an identifier or a string literal so
/// that names like `"accelerator:A100"` can be written.
struct RawResource {
    name: LitStr,
    value: Expr,
}

impl Parse for RawArg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.parse()?;
        if key == "resources" && input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            let entries = content.parse_terminated(RawResource::parse, Token![,])?;
            return Ok(RawArg::Resources { key, entries });
        }
        if key == "resources" {
            return Err(syn::Error::new(
                key.span(),
                "write resources as `resources(name = amount, \"other:name\" = amount)`",
            ));
        }
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        Ok(RawArg::Value { key, value })
    }
}

impl Parse for RawResource {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = if input.peek(LitStr) {
            input.parse::<LitStr>()?
        } else {
            let ident: Ident = input.parse().map_err(|e| {
                syn::Error::new(e.span(), "expected a resource name (identifier or string)")
            })?;
            LitStr::new(&ident.to_string(), ident.span())
        };
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        Ok(RawResource { name, value })
    }
}

/// Parses the attribute arguments: the expression building the default options (e.g.
/// `::photon::TaskOptions::new().num_cpus(1.0).resource("tpu", 1.0)`) and `num_returns`.
pub(crate) fn parse_options(kind: OptionsKind, attr: TokenStream2) -> syn::Result<Options> {
    let args = Punctuated::<RawArg, Token![,]>::parse_terminated.parse2(attr)?;
    let builder = kind.builder();
    let mut chain = quote!(#builder::new());
    let mut num_returns = 1;
    let mut seen = HashSet::new();
    for arg in args {
        let key = match &arg {
            RawArg::Value { key, .. } | RawArg::Resources { key, .. } => key.clone(),
        };
        if !seen.insert(key.to_string()) {
            return Err(syn::Error::new(
                key.span(),
                format!("`{key}` is given twice"),
            ));
        }
        match arg {
            RawArg::Resources { entries, .. } => {
                let mut names = HashSet::new();
                for RawResource { name, value } in entries {
                    if !names.insert(name.value()) {
                        return Err(syn::Error::new(
                            name.span(),
                            format!("resource `{}` is given twice", name.value()),
                        ));
                    }
                    if name.value().is_empty() {
                        return Err(syn::Error::new(name.span(), "resource name is empty"));
                    }
                    let amount = amount(&value, &format!("resource `{}`", name.value()))?;
                    chain = quote!(#chain.resource(#name, #amount));
                }
            }
            RawArg::Value { key, value } => {
                let Some(&(_, value_kind)) = kind.keys().iter().find(|(k, _)| key == k) else {
                    let known: Vec<_> = kind
                        .keys()
                        .iter()
                        .map(|(k, _)| *k)
                        .chain(["resources"])
                        .collect();
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown {} option `{key}`; expected one of: {}",
                            kind.macro_name(),
                            known.join(", ")
                        ),
                    ));
                };
                let what = format!("`{key}`");
                let value = match value_kind {
                    ValueKind::Amount => amount(&value, &what)?,
                    ValueKind::Count => count(&value, &what, 0)?,
                    ValueKind::PositiveCount => count(&value, &what, 1)?,
                    ValueKind::Bool => boolean(&value, &what)?,
                    ValueKind::Returns => {
                        num_returns = returns(&value, &what)?;
                        continue;
                    }
                };
                chain = quote!(#chain.#key(#value));
            }
        }
    }
    Ok(Options {
        builder: chain,
        num_returns,
    })
}

fn returns(expr: &Expr, what: &str) -> syn::Result<u32> {
    let Lit::Int(int) = literal(expr, what, "an integer literal")? else {
        return Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be an integer"),
        ));
    };
    let value: u32 = int.base10_parse()?;
    if !(1..=MAX_RETURNS).contains(&value) {
        return Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be 1 to {MAX_RETURNS}"),
        ));
    }
    Ok(value)
}

/// Strips the invisible groups macro_rules wraps around `$e:expr` fragments.
fn peel(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => peel(&group.expr),
        Expr::Paren(paren) => peel(&paren.expr),
        other => other,
    }
}

/// Only literals are accepted: the values are checked here, at compile time, rather than in a
/// worker at run time.
fn literal<'a>(expr: &'a Expr, what: &str, expected: &str) -> syn::Result<&'a Lit> {
    match peel(expr) {
        Expr::Lit(lit) => Ok(&lit.lit),
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => Err(syn::Error::new_spanned(
            expr,
            format!("{what} must not be negative"),
        )),
        _ => Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be {expected}"),
        )),
    }
}

fn amount(expr: &Expr, what: &str) -> syn::Result<TokenStream2> {
    let value: f64 = match literal(expr, what, "a number literal")? {
        Lit::Int(int) => int.base10_parse::<u64>()? as f64,
        Lit::Float(float) => float.base10_parse()?,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!("{what} must be a number"),
            ));
        }
    };
    if !value.is_finite() {
        return Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be finite"),
        ));
    }
    let value = Literal::f64_unsuffixed(value);
    Ok(quote!(#value))
}

fn count(expr: &Expr, what: &str, min: u32) -> syn::Result<TokenStream2> {
    let Lit::Int(int) = literal(expr, what, "an integer literal")? else {
        return Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be an integer"),
        ));
    };
    let value: u32 = int.base10_parse()?;
    if value < min {
        return Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be at least {min}"),
        ));
    }
    let value = Literal::u32_unsuffixed(value);
    Ok(quote!(#value))
}

fn boolean(expr: &Expr, what: &str) -> syn::Result<TokenStream2> {
    match literal(expr, what, "`true` or `false`")? {
        Lit::Bool(b) => {
            let value = b.value;
            Ok(quote!(#value))
        }
        other => Err(syn::Error::new_spanned(
            other,
            format!("{what} must be `true` or `false`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(attr: TokenStream2) -> syn::Result<String> {
        parse_options(OptionsKind::Task, attr).map(|t| t.builder.to_string().replace(' ', ""))
    }

    fn actor(attr: TokenStream2) -> syn::Result<String> {
        parse_options(OptionsKind::Actor, attr).map(|t| t.builder.to_string().replace(' ', ""))
    }

    #[test]
    fn num_returns_is_kept_out_of_the_builder_and_bounded() {
        let parsed = parse_options(OptionsKind::Task, quote!(num_returns = 3, max_retries = 1))
            .expect("parses");
        assert_eq!(parsed.num_returns, 3);
        assert_eq!(
            parsed.builder.to_string().replace(' ', ""),
            "::photon::TaskOptions::new().max_retries(1)"
        );
        let method = parse_options(
            OptionsKind::Method,
            quote!(num_returns = 2, max_retries = 4),
        )
        .expect("parses");
        assert_eq!(method.num_returns, 2);
        assert_eq!(
            method.builder.to_string().replace(' ', ""),
            "::photon::MethodOptions::new().max_retries(4)"
        );
        assert_eq!(
            parse_options(OptionsKind::Task, quote!())
                .unwrap()
                .num_returns,
            1
        );
        assert!(err(task(quote!(num_returns = 0))).contains("must be 1 to 8"));
        assert!(err(task(quote!(num_returns = 9))).contains("must be 1 to 8"));
        assert!(err(actor(quote!(num_returns = 2))).contains("unknown #[photon::actor] option"));
        let msg = parse_options(OptionsKind::Method, quote!(num_cpus = 1))
            .err()
            .expect("methods take no resources")
            .to_string();
        assert!(
            msg.contains("unknown #[photon::method] option `num_cpus`"),
            "{msg}"
        );
    }

    fn err(result: syn::Result<String>) -> String {
        result.expect_err("expected an error").to_string()
    }

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(task(quote!()).unwrap(), "::photon::TaskOptions::new()");
        assert_eq!(actor(quote!()).unwrap(), "::photon::ActorOptions::new()");
    }

    #[test]
    fn task_options_chain_in_order_with_f64_amounts() {
        let out = task(quote!(
            num_cpus = 1,
            num_gpus = 0.25,
            resources(tpu = 1, "accelerator:A100" = 0.5),
            max_retries = 3,
            retry_exceptions = true,
        ))
        .unwrap();
        assert_eq!(
            out,
            "::photon::TaskOptions::new().num_cpus(1.0).num_gpus(0.25)\
             .resource(\"tpu\",1.0).resource(\"accelerator:A100\",0.5)\
             .max_retries(3).retry_exceptions(true)"
        );
    }

    #[test]
    fn actor_options_chain() {
        let out = actor(quote!(
            num_cpus = 2.0,
            max_restarts = 5,
            max_concurrency = 4
        ))
        .unwrap();
        assert_eq!(
            out,
            "::photon::ActorOptions::new().num_cpus(2.0).max_restarts(5).max_concurrency(4)"
        );
    }

    #[test]
    fn unknown_keys_name_the_accepted_ones() {
        let msg = err(task(quote!(max_restarts = 1)));
        assert!(
            msg.contains("unknown #[photon::remote] option `max_restarts`"),
            "{msg}"
        );
        assert!(msg.contains("max_retries"), "{msg}");
        let msg = err(actor(quote!(retry_exceptions = true)));
        assert!(
            msg.contains("unknown #[photon::actor] option `retry_exceptions`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(err(task(quote!(num_cpus = -1))).contains("`num_cpus` must not be negative"));
        assert!(err(task(quote!(num_cpus = "1"))).contains("`num_cpus` must be a number"));
        assert!(err(task(quote!(num_cpus = CPUS))).contains("must be a number literal"));
        assert!(err(task(quote!(max_retries = 1.5))).contains("`max_retries` must be an integer"));
        assert!(err(task(quote!(retry_exceptions = 1))).contains("must be `true` or `false`"));
        assert!(err(actor(quote!(max_concurrency = 0))).contains("must be at least 1"));
        assert!(!err(task(quote!(max_retries = 99999999999))).is_empty());
    }

    #[test]
    fn duplicates_are_rejected() {
        assert!(
            err(task(quote!(num_cpus = 1, num_cpus = 2))).contains("`num_cpus` is given twice")
        );
        let msg = err(task(quote!(resources(tpu = 1, "tpu" = 2))));
        assert!(msg.contains("resource `tpu` is given twice"), "{msg}");
    }

    #[test]
    fn resources_need_the_list_form() {
        let msg = err(task(quote!(resources = 1)));
        assert!(msg.contains("resources(name = amount"), "{msg}");
        assert!(err(task(quote!(resources(tpu = -2)))).contains("resource `tpu` must not be"));
    }
}
