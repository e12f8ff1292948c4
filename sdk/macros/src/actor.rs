//! `#[photon::actor]`: an inherent impl block whose type can live as an actor on a worker.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{
    Attribute, FnArg, Ident, ImplItem, ImplItemFn, Item, ItemImpl, PathArguments, Signature, Type,
    Visibility,
};

use crate::options::{Options, OptionsKind, parse_options};
use crate::signature::{self, Arg, Output, Role};

/// A `pub` associated fn returning `Self` (or `Result<Self, E>`).
struct Constructor<'a> {
    func: &'a ImplItemFn,
    args: Vec<Arg>,
    fallible: bool,
}

/// A `pub` method taking `&self` or `&mut self`.
struct Method<'a> {
    func: &'a ImplItemFn,
    args: Vec<Arg>,
    output: Output,
    mutable: bool,
    /// From its `#[photon::method(...)]` attribute, if any.
    options: Options,
    /// The value type of each return (one unless `num_returns` > 1).
    return_types: Vec<Type>,
}

/// Whether `attr` is `#[photon::method(...)]`, which this macro consumes (spelled in full, so
/// that another crate's `#[method]` is left alone).
fn is_method_attr(attr: &Attribute) -> bool {
    let path = attr.path();
    path.segments.len() == 2
        && path.segments[0].ident == "photon"
        && path.segments[1].ident == "method"
}

/// The method's options from its `#[photon::method(...)]` attribute (at most one).
fn method_options(func: &ImplItemFn) -> syn::Result<Options> {
    let mut attrs = func.attrs.iter().filter(|a| is_method_attr(a));
    let Some(attr) = attrs.next() else {
        return parse_options(OptionsKind::Method, TokenStream2::new());
    };
    if let Some(second) = attrs.next() {
        return Err(syn::Error::new_spanned(
            second,
            "give a method one #[photon::method(...)] attribute",
        ));
    }
    let args = match &attr.meta {
        syn::Meta::Path(_) => TokenStream2::new(),
        syn::Meta::List(list) => list.tokens.clone(),
        syn::Meta::NameValue(_) => {
            return Err(syn::Error::new_spanned(
                attr,
                "write #[photon::method(num_returns = 2, max_retries = 1)]",
            ));
        }
    };
    parse_options(OptionsKind::Method, args)
}

/// Expands `#[photon::actor(attr)] impl T { ... }`: the impl unchanged, a `THandle` with the
/// caller side, and (inside `const _`) the worker-side instance type and class registration.
pub(crate) fn expand_actor(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let block = match syn::parse2::<Item>(item)? {
        Item::Impl(block) => block,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "#[photon::actor] goes on the type's inherent `impl` block \
                 (`impl Counter { ... }`)",
            ));
        }
    };
    let options = parse_options(OptionsKind::Actor, attr)?.builder;
    let class = class_ident(&block)?;
    let self_ty = &*block.self_ty;

    let mut constructors = Vec::new();
    let mut methods = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(func) = item else { continue };
        let marked = func.attrs.iter().find(|a| is_method_attr(a));
        // Only what is visible outside the impl is offered to remote callers.
        if matches!(func.vis, Visibility::Inherited) {
            if let Some(attr) = marked {
                return Err(syn::Error::new_spanned(
                    attr,
                    "#[photon::method] goes on `pub` methods, which callers reach remotely",
                ));
            }
            continue;
        }
        match func.sig.receiver() {
            None => {
                if let Some(attr) = marked {
                    return Err(syn::Error::new_spanned(
                        attr,
                        "#[photon::method] goes on methods taking `&self` or `&mut self`, not \
                         on constructors or associated functions",
                    ));
                }
                if let Some(fallible) = constructor_kind(&func.sig, self_ty, &class)? {
                    signature::check_plain(&func.sig, Role::ActorConstructor)
                        .map_err(|e| local_hint(e, &class))?;
                    let mut args = signature::typed_args(&func.sig, Role::ActorConstructor)
                        .map_err(|e| local_hint(e, &class))?;
                    args.iter_mut()
                        .for_each(|a| signature::replace_self(&mut a.ty, self_ty));
                    constructors.push(Constructor {
                        func,
                        args,
                        fallible,
                    });
                }
            }
            Some(_) => {
                let mutable = receiver_mutability(&func.sig, self_ty, &class)?;
                signature::check_plain(&func.sig, Role::ActorMethod)
                    .map_err(|e| local_hint(e, &class))?;
                let mut args = signature::typed_args(&func.sig, Role::ActorMethod)
                    .map_err(|e| local_hint(e, &class))?;
                args.iter_mut()
                    .for_each(|a| signature::replace_self(&mut a.ty, self_ty));
                let mut output = signature::output(&func.sig.output, Role::ActorMethod)
                    .map_err(|e| local_hint(e, &class))?;
                if let Output::Value(ty) | Output::Result(ty) = &mut output {
                    signature::replace_self(ty, self_ty);
                }
                let options = method_options(func)?;
                let return_types = signature::return_types(&output, options.num_returns, "method")?;
                methods.push(Method {
                    func,
                    args,
                    output,
                    mutable,
                    options,
                    return_types,
                });
            }
        }
    }
    if constructors.is_empty() {
        return Err(syn::Error::new_spanned(
            self_ty,
            format!(
                "#[photon::actor] needs at least one `pub` constructor: an associated fn \
                 returning `Self` (e.g. `pub fn new(...) -> Self`) in this impl block of `{class}`"
            ),
        ));
    }
    let handle = format_ident!("{}Handle", class);
    check_name_clashes(&handle, &constructors, &methods)?;

    let class_suffix = format!("::{class}");
    let handle_items = handle_items(&class, &options, &constructors, &methods);
    let handle_doc = format!(
        "Remote handle of a `{class}` actor (generated by `#[photon::actor]`): create one with \
         a constructor, find a named one with `lookup`, and call its `pub` methods remotely; each \
         call returns an `ObjectRef` to the result. Clones refer to the same actor."
    );
    let method_arms = methods.iter().map(|m| method_arm(m, self_ty, &class));
    let constructor_arms = constructors
        .iter()
        .map(|c| constructor_arm(c, self_ty, &class));
    let object_result = quote! {
        ::photon::__private::BoxFuture<
            ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String>,
        >
    };
    let instance_result = quote! {
        ::photon::__private::BoxFuture<
            ::std::result::Result<
                ::std::sync::Arc<dyn ::photon::__private::ActorInstance>,
                ::std::string::String,
            >,
        >
    };

    // `#[photon::method]` is this macro's to read; the compiler must not see it.
    let mut block = block.clone();
    for item in &mut block.items {
        if let ImplItem::Fn(func) = item {
            func.attrs.retain(|a| !is_method_attr(a));
        }
    }

    Ok(quote! {
        #block

        #[doc = #handle_doc]
        #[derive(Clone, Debug)]
        // A program may use only some of the handle's functions, or none yet.
        #[allow(dead_code)]
        pub struct #handle {
            inner: ::photon::ActorHandle,
        }

        #[allow(dead_code)]
        impl #handle {
            #handle_items
        }

        // A handle travels inside values (an argument's struct) as the actor's id.
        impl ::photon::__private::serde::Serialize for #handle {
            fn serialize<S: ::photon::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                ::photon::__private::serde::Serialize::serialize(&self.inner, serializer)
            }
        }

        impl<'de> ::photon::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::photon::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let inner = <::photon::ActorHandle as ::photon::__private::serde::Deserialize>
                    ::deserialize(deserializer)?;
                ::photon::__private::check_actor_class(&inner, #handle::CLASS)
                    .map_err(<D::Error as ::photon::__private::serde::de::Error>::custom)?;
                ::std::result::Result::Ok(Self { inner })
            }
        }

        const _: () = {
            // The worker-side actor: the user's value behind a lock, so `&self` methods can run
            // together and `&mut self` ones alone.
            struct __PhotonActor(::photon::__private::RwLock<#self_ty>);

            impl ::photon::__private::ActorInstance for __PhotonActor {
                // `args` is unused when the actor exports no method.
                #[allow(unused_variables)]
                fn call(
                    self: ::std::sync::Arc<Self>,
                    method: &str,
                    args: ::photon::__private::Args,
                ) -> #object_result {
                    match method {
                        #(#method_arms)*
                        _ => {
                            let message = ::std::format!(
                                "actor class {} has no method `{}`",
                                ::std::concat!(::std::module_path!(), #class_suffix),
                                method,
                            );
                            ::std::boxed::Box::pin(async move {
                                ::std::result::Result::Err(message)
                            })
                        }
                    }
                }
            }

            fn __photon_construct(
                constructor: &str,
                args: ::photon::__private::Args,
            ) -> #instance_result {
                match constructor {
                    #(#constructor_arms)*
                    _ => {
                        let message = ::std::format!(
                            "actor class {} has no constructor `{}`",
                            ::std::concat!(::std::module_path!(), #class_suffix),
                            constructor,
                        );
                        ::std::boxed::Box::pin(async move { ::std::result::Result::Err(message) })
                    }
                }
            }

            ::photon::__private::inventory::submit! {
                ::photon::__private::ActorClass {
                    name: #handle::CLASS,
                    construct: __photon_construct,
                }
            }
        };
    })
}

/// The type's name, from `impl Name { ... }`; generic and trait impls cannot be actors.
fn class_ident(block: &ItemImpl) -> syn::Result<Ident> {
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[photon::actor] goes on an inherent impl block (`impl Counter { ... }`), not on a \
             trait impl",
        ));
    }
    if !block.generics.params.is_empty() || block.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &block.generics,
            "generic actor types are not supported: the worker needs a concrete type",
        ));
    }
    if let Some(unsafety) = &block.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "actor impl blocks cannot be `unsafe`",
        ));
    }
    if let Type::Path(path) = signature::peel(&block.self_ty)
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
        && matches!(last.arguments, PathArguments::None)
    {
        return Ok(last.ident.clone());
    }
    Err(syn::Error::new_spanned(
        &block.self_ty,
        "#[photon::actor] needs a plain, non-generic type name (`impl Counter { ... }`)",
    ))
}

/// Points at the way out for helpers that cannot be remote.
fn local_hint(error: syn::Error, class: &Ident) -> syn::Error {
    let message = format!(
        "{error} (`pub` items of an #[photon::actor] block are exported to remote callers; make \
         it private or move it to a separate `impl {class}` block to keep it local)"
    );
    syn::Error::new(error.span(), message)
}

/// Whether `ty` names the actor type: `Self`, the type as written, or its bare name.
fn is_actor_type(ty: &Type, self_ty: &Type, class: &Ident) -> bool {
    let Type::Path(path) = signature::peel(ty) else {
        return false;
    };
    if path.qself.is_some() {
        return false;
    }
    path.path.is_ident("Self")
        || path.path.is_ident(class)
        || quote!(#ty).to_string() == quote!(#self_ty).to_string()
}

/// `Some(fallible)` when the receiver-less `sig` returns `Self` or `Result<Self, E>`.
fn constructor_kind(sig: &Signature, self_ty: &Type, class: &Ident) -> syn::Result<Option<bool>> {
    let syn::ReturnType::Type(_, ty) = &sig.output else {
        return Ok(None);
    };
    if is_actor_type(ty, self_ty, class) {
        return Ok(Some(false));
    }
    let ok = match signature::result_ok_type(ty) {
        Ok(Some(ok)) => ok,
        // Not a constructor's `Result`: left alone like any other associated fn.
        Ok(None) | Err(_) => return Ok(None),
    };
    Ok(is_actor_type(&ok, self_ty, class).then_some(true))
}

/// `true` for `&mut self`, `false` for `&self`; anything else is an error.
fn receiver_mutability(sig: &Signature, self_ty: &Type, class: &Ident) -> syn::Result<bool> {
    let Some(FnArg::Receiver(receiver)) = sig.inputs.first() else {
        unreachable!("caller checked for a receiver")
    };
    if let Type::Reference(reference) = signature::peel(&receiver.ty)
        && is_actor_type(&reference.elem, self_ty, class)
    {
        return Ok(reference.mutability.is_some());
    }
    let message = if receiver.reference.is_none() && receiver.colon_token.is_none() {
        "actor methods cannot take `self` by value (the actor outlives the call); use `&self` or \
         `&mut self`"
    } else {
        "actor methods take `&self` or `&mut self`"
    };
    Err(local_hint(
        syn::Error::new_spanned(receiver, message),
        class,
    ))
}

/// Errors when a constructor or method would give the handle a function twice.
fn check_name_clashes(
    handle: &Ident,
    constructors: &[Constructor],
    methods: &[Method],
) -> syn::Result<()> {
    let mut taken: HashMap<String, String> = ["CLASS", "options", "lookup", "handle"]
        .into_iter()
        .map(|name| (name.to_owned(), "a function every handle has".to_owned()))
        .collect();
    let mut claim = |name: String, span: Span, from: String| -> syn::Result<()> {
        if let Some(other) = taken.get(&name) {
            return Err(syn::Error::new(
                span,
                format!(
                    "`{name}` would clash with the generated `{handle}::{name}` ({other}); \
                     rename it"
                ),
            ));
        }
        taken.insert(name, from);
        Ok(())
    };
    for ctor in constructors {
        let ident = &ctor.func.sig.ident;
        claim(
            ident.to_string(),
            ident.span(),
            format!("constructor `{ident}`"),
        )?;
        let with = format!("{ident}_with");
        claim(
            with,
            ident.span(),
            format!("the options variant of constructor `{ident}`"),
        )?;
    }
    for method in methods {
        let ident = &method.func.sig.ident;
        claim(ident.to_string(), ident.span(), format!("method `{ident}`"))?;
        claim(
            format!("{ident}_with"),
            ident.span(),
            format!("the options variant of method `{ident}`"),
        )?;
        claim(
            format!("{ident}_options"),
            ident.span(),
            format!("the default options of method `{ident}`"),
        )?;
    }
    Ok(())
}

/// The user's docs and `cfg`s, copied onto the generated counterpart.
fn carried_attrs(func: &ImplItemFn) -> Vec<&Attribute> {
    func.attrs
        .iter()
        .filter(|a| a.path().is_ident("doc") || a.path().is_ident("cfg"))
        .collect()
}

fn cfg_attrs(func: &ImplItemFn) -> Vec<&Attribute> {
    func.attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect()
}

/// Everything inside `impl THandle { ... }`.
fn handle_items(
    class: &Ident,
    options: &TokenStream2,
    constructors: &[Constructor],
    methods: &[Method],
) -> TokenStream2 {
    let class_doc = "The registered class name: the module path of the `impl` block and the type \
                     name.";
    let class_suffix = format!("::{class}");
    let ctors = constructors.iter().map(|ctor| {
        let Constructor { func, args, .. } = ctor;
        let ident = &func.sig.ident;
        let name = ident.to_string();
        let with = format_ident!("{}_with", ident);
        let vis = &func.vis;
        let attrs = carried_attrs(func);
        let cfgs = cfg_attrs(func);
        let ctx = signature::fresh_ident("ctx", args);
        let opts = signature::fresh_ident("options", args);
        let (params, into_args) = signature::caller_params(args);
        let names = args.iter().map(|a| &a.ident);
        let doc =
            format!("Starts an actor through its `{name}` constructor with the default options.");
        let with_doc = format!("Starts an actor through its `{name}` constructor with `{opts}`.");
        quote! {
            #(#attrs)*
            ///
            #[doc = #doc]
            #vis fn #ident(#ctx: &::photon::Context, #(#params),*) -> ::photon::Result<Self> {
                Self::#with(#ctx, Self::options(), #(#names),*)
            }

            #(#cfgs)*
            #[doc = #with_doc]
            #vis fn #with(
                #ctx: &::photon::Context,
                #opts: ::photon::ActorOptions,
                #(#params),*
            ) -> ::photon::Result<Self> {
                #ctx.create_actor(Self::CLASS, #name, #opts, ::std::vec![#(#into_args),*])
                    .map(|inner| Self { inner })
            }
        }
    });
    let calls = methods.iter().map(|method| {
        let Method {
            func,
            args,
            options,
            return_types,
            ..
        } = method;
        let ident = &func.sig.ident;
        let name = ident.to_string();
        let with = format_ident!("{}_with", ident);
        let defaults = format_ident!("{}_options", ident);
        let vis = &func.vis;
        let attrs = carried_attrs(func);
        let cfgs = cfg_attrs(func);
        let returns = signature::caller_returns(return_types);
        let builder = &options.builder;
        let opts = signature::fresh_ident("options", args);
        let (params, into_args) = signature::caller_params(args);
        let names = args.iter().map(|a| &a.ident);
        let doc =
            format!("Calls `{name}` on the actor; the result arrives through the `ObjectRef`.");
        let with_doc =
            format!("Calls `{name}` with `{opts}` instead of its defaults (`{defaults}()`).");
        let defaults_doc =
            format!("The default options of `{name}` (its `#[photon::method(...)]` attribute).");
        quote! {
            #(#attrs)*
            ///
            #[doc = #doc]
            #vis fn #ident(&self, #(#params),*) -> #returns {
                self.#with(Self::#defaults(), #(#names),*)
            }

            #(#cfgs)*
            #[doc = #with_doc]
            #vis fn #with(&self, #opts: ::photon::MethodOptions, #(#params),*) -> #returns {
                self.inner.call_with(#name, #opts, ::std::vec![#(#into_args),*])
            }

            #(#cfgs)*
            #[doc = #defaults_doc]
            #vis fn #defaults() -> ::photon::MethodOptions {
                #builder
            }
        }
    });
    quote! {
        #[doc = #class_doc]
        pub const CLASS: &'static str = ::std::concat!(::std::module_path!(), #class_suffix);

        /// The default options given in the `#[photon::actor(...)]` attribute.
        pub fn options() -> ::photon::ActorOptions {
            #options
        }

        #(#ctors)*

        /// Finds the running actor registered under `name` (see `ActorOptions::name`).
        pub fn lookup(ctx: &::photon::Context, name: &str) -> ::photon::Result<Self> {
            ctx.get_actor(name, Self::CLASS).map(|inner| Self { inner })
        }

        /// The untyped handle underneath.
        pub fn handle(&self) -> &::photon::ActorHandle {
            &self.inner
        }

        #(#calls)*
    }
}

/// The `match` arm running one method on the worker.
fn method_arm(method: &Method, self_ty: &Type, class: &Ident) -> TokenStream2 {
    let Method {
        func,
        args,
        output,
        mutable,
        return_types,
        ..
    } = method;
    let ident = &func.sig.ident;
    let name = ident.to_string();
    let cfgs = cfg_attrs(func);
    let (decode, locals) = signature::decode_args(args, &format!("::{class}::{name}"));
    // The lock guard lives until the result is encoded, across the method's `.await` if any.
    let (lock, receiver) = if *mutable {
        (
            quote!(let mut guard = self.0.write().await;),
            quote!(::std::ops::DerefMut::deref_mut(&mut guard)),
        )
    } else {
        (
            quote!(let guard = self.0.read().await;),
            quote!(::std::ops::Deref::deref(&guard)),
        )
    };
    // Fully qualified so that a method of the guard type cannot be picked instead.
    let call = signature::invoke(
        &func.sig,
        quote!(<#self_ty>::#ident(#receiver, #(#locals),*)),
    );
    let result = signature::encode_outputs(output, return_types, call);
    quote! {
        #(#cfgs)*
        #name => ::std::boxed::Box::pin(async move {
            #decode
            #lock
            #result
        }),
    }
}

/// The `match` arm running one constructor on the worker.
fn constructor_arm(ctor: &Constructor, self_ty: &Type, class: &Ident) -> TokenStream2 {
    let Constructor {
        func,
        args,
        fallible,
    } = ctor;
    let ident = &func.sig.ident;
    let name = ident.to_string();
    let cfgs = cfg_attrs(func);
    let (decode, locals) = signature::decode_args(args, &format!("::{class}::{name}"));
    let call = signature::invoke(&func.sig, quote!(<#self_ty>::#ident(#(#locals),*)));
    let value = if *fallible {
        quote! {
            match #call {
                ::std::result::Result::Ok(value) => value,
                ::std::result::Result::Err(error) => {
                    return ::std::result::Result::Err(::std::format!("{error:#}"));
                }
            }
        }
    } else {
        call
    };
    quote! {
        #(#cfgs)*
        #name => ::std::boxed::Box::pin(async move {
            #decode
            let value: #self_ty = #value;
            let instance: ::std::sync::Arc<dyn ::photon::__private::ActorInstance> =
                ::std::sync::Arc::new(__PhotonActor(::photon::__private::RwLock::new(value)));
            // Spelled out: nothing else in this block fixes the error type for `?`.
            ::std::result::Result::<_, ::std::string::String>::Ok(instance)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(attr: TokenStream2, item: TokenStream2) -> String {
        let out = expand_actor(attr, item).expect("expansion failed");
        syn::parse2::<syn::File>(out.clone()).expect("expansion is not a valid file");
        out.to_string().replace(' ', "")
    }

    fn error(item: TokenStream2) -> String {
        expand_actor(quote!(), item)
            .expect_err("expected an error")
            .to_string()
    }

    fn counter() -> TokenStream2 {
        quote! {
            impl Counter {
                /// Starts at `start`.
                pub fn new(start: u64) -> Self { Counter { value: start } }
                pub fn from_file(path: String) -> std::io::Result<Counter> { todo!() }
                pub fn incr(&mut self, by: u64) -> u64 { self.value += by; self.value }
                pub async fn get(&self) -> u64 { self.value }
                pub fn fail(&self) -> Result<Self, String> { Err("no".into()) }
                fn helper(&self, s: &str) -> &str { s }
                pub fn describe() -> String { String::new() }
            }
        }
    }

    #[test]
    fn counter_expands_to_impl_handle_and_registration() {
        let out = expand(quote!(num_cpus = 0.5, max_concurrency = 4), counter());
        // The impl block is kept, private helper included.
        assert!(out.starts_with("implCounter{"), "{out}");
        assert!(out.contains("fnhelper(&self,s:&str)->&str{s}"), "{out}");
        assert!(
            out.contains("pubstructCounterHandle{inner:::photon::ActorHandle,}"),
            "{out}"
        );
        assert!(
            out.contains(
                "pubconstCLASS:&'staticstr=::std::concat!(::std::module_path!(),\"::Counter\")"
            ),
            "{out}"
        );
        assert!(out.contains("::photon::ActorOptions::new().num_cpus(0.5).max_concurrency(4)"));
        // Constructors: plain and fallible, each with a `_with` variant.
        assert!(
            out.contains(
                "pubfnnew(ctx:&::photon::Context,start:impl::photon::IntoArg<u64>)\
             ->::photon::Result<Self>{Self::new_with(ctx,Self::options(),start)}"
            ),
            "{out}"
        );
        let create = "ctx.create_actor(Self::CLASS,\"new\",options,\
                      ::std::vec![::photon::IntoArg::<u64>::into_arg(start)])\
                      .map(|inner|Self{inner})";
        assert!(out.contains(create), "{out}");
        assert!(out.contains("pubfnfrom_file_with("), "{out}");
        assert!(
            out.contains("#[doc=r\"Startsat`start`.\"]"),
            "docs are carried: {out}"
        );
        assert!(
            out.contains("pubfnlookup(ctx:&::photon::Context,name:&str)"),
            "{out}"
        );
        assert!(
            out.contains("pubfnhandle(&self)->&::photon::ActorHandle"),
            "{out}"
        );
        // Methods: `Self` in a return type means the actor type, not the handle.
        let incr = "pubfnincr(&self,by:impl::photon::IntoArg<u64>)->::photon::ObjectRef<u64>\
                    {self.incr_with(Self::incr_options(),by)}";
        assert!(out.contains(incr), "{out}");
        let incr_with = "pubfnincr_with(&self,options:::photon::MethodOptions,\
                         by:impl::photon::IntoArg<u64>)->::photon::ObjectRef<u64>\
                         {self.inner.call_with(\"incr\",options,";
        assert!(out.contains(incr_with), "{out}");
        assert!(
            out.contains("pubfnget(&self,)->::photon::ObjectRef<u64>"),
            "{out}"
        );
        assert!(
            out.contains("pubfnfail(&self,)->::photon::ObjectRef<Counter>"),
            "{out}"
        );
        // Not exported: the private helper and a pub fn that is no constructor.
        assert!(!out.contains("\"helper\""), "{out}");
        assert!(!out.contains("\"describe\""), "{out}");
        // Worker side.
        assert!(
            out.contains("struct__PhotonActor(::photon::__private::RwLock<Counter>);"),
            "{out}"
        );
        assert!(
            out.contains("\"incr\"=>::std::boxed::Box::pin(asyncmove{"),
            "{out}"
        );
        assert!(out.contains("letmutguard=self.0.write().await;"), "{out}");
        assert!(
            out.contains(
                "<Counter>::incr(::std::ops::DerefMut::deref_mut(&mutguard),__photon_arg_0)"
            ),
            "{out}"
        );
        assert!(
            out.contains("<Counter>::get(::std::ops::Deref::deref(&guard),).await"),
            "{out}"
        );
        assert!(out.contains("\"argument`by`of\""), "{out}");
        assert!(out.contains("\"::Counter::incr\""), "{out}");
        assert!(out.contains("\"actorclass{}hasnomethod`{}`\""), "{out}");
        assert!(
            out.contains("\"from_file\"=>::std::boxed::Box::pin(asyncmove{"),
            "{out}"
        );
        assert!(
            out.contains("return::std::result::Result::Err(::std::format!(\"{error:#}\"))"),
            "{out}"
        );
        assert!(
            out.contains("name:CounterHandle::CLASS,construct:__photon_construct"),
            "{out}"
        );
        assert!(out.contains("inventory::submit!"), "{out}");
    }

    #[test]
    fn method_attributes_are_checked_and_removed() {
        let out = expand(
            quote!(),
            quote! {
                impl Pair {
                    pub fn new() -> Self { Pair }
                    #[photon::method(num_returns = 2, max_retries = 3)]
                    pub fn both(&self) -> Result<(u8, String), String> { todo!() }
                }
            },
        );
        assert!(
            !out.contains("#[photon::method(num_returns"),
            "the attribute is consumed: {out}"
        );
        assert!(
            out.contains(
                "pubfnboth(&self,)->(::photon::ObjectRef<u8>,::photon::ObjectRef<String>,)"
            ),
            "{out}"
        );
        assert!(
            out.contains("pubfnboth_options()->::photon::MethodOptions{::photon::MethodOptions::new().max_retries(3)}"),
            "{out}"
        );
        assert!(
            out.contains("::photon::__private::encode_returns("),
            "{out}"
        );

        let with_ctor =
            |extra: TokenStream2| quote!(impl Pair { pub fn new() -> Self { Pair } #extra });
        let not_a_tuple = error(with_ctor(quote!(
            #[photon::method(num_returns = 2)]
            pub fn one(&self) -> u8 {
                1
            }
        )));
        assert!(
            not_a_tuple.contains("must return a 2-tuple"),
            "{not_a_tuple}"
        );
        let private = error(with_ctor(quote!(
            #[photon::method(max_retries = 1)]
            fn hidden(&self) {}
        )));
        assert!(private.contains("goes on `pub` methods"), "{private}");
        let on_ctor = error(quote!(impl Pair {
            #[photon::method]
            pub fn new() -> Self { Pair }
        }));
        assert!(on_ctor.contains("not on constructors"), "{on_ctor}");
        let clash = error(with_ctor(quote!(
            pub fn go(&self) {}
            pub fn go_with(&self) {}
        )));
        assert!(clash.contains("`go_with` would clash"), "{clash}");
    }

    #[test]
    fn visibility_of_methods_is_mirrored() {
        let out = expand(
            quote!(),
            quote! {
                impl Worker {
                    pub(crate) fn new() -> Worker { Worker }
                    pub(crate) fn run(&self, job: Vec<String>) {}
                }
            },
        );
        assert!(
            out.contains("pub(crate)fnnew(ctx:&::photon::Context,)"),
            "{out}"
        );
        let run = "pub(crate)fnrun(&self,job:impl::photon::IntoArg<Vec<String>>)\
                   ->::photon::ObjectRef<()>";
        assert!(out.contains(run), "{out}");
        assert!(
            out.contains(
                "run_blocking(||<Worker>::run(::std::ops::Deref::deref(&guard),__photon_arg_0));\
                 ::photon::__private::encode(&())"
            ),
            "{out}"
        );
    }

    #[test]
    fn rejections() {
        // Items added next to a valid constructor.
        let with_ctor =
            |extra: TokenStream2| quote!(impl Counter { pub fn new() -> Self { Counter } #extra });
        let cases = [
            (
                quote!(impl Counter { fn new() -> Self { Counter } }),
                "needs at least one `pub` constructor",
            ),
            (
                with_ctor(quote!(
                    pub fn take(self) {}
                )),
                "cannot take `self` by value",
            ),
            (
                with_ctor(quote!(
                    pub fn b(self: Box<Self>) {}
                )),
                "actor methods take `&self` or `&mut self`",
            ),
            (
                with_ctor(quote!(
                    pub fn f(&self, s: &str) {}
                )),
                "actor method arguments must be owned (use String / Vec<T>)",
            ),
            (
                quote!(impl Counter { pub fn new(s: &str) -> Self { Counter } }),
                "actor constructor arguments must be owned",
            ),
            (
                with_ctor(quote!(
                    pub fn f<T>(&self, t: T) {}
                )),
                "generic actor methods are not supported",
            ),
            (
                with_ctor(quote!(
                    pub fn f(&self) -> &u8 {
                        todo!()
                    }
                )),
                "actor methods must return owned values",
            ),
            (
                with_ctor(quote!(
                    pub fn handle(&self) {}
                )),
                "`handle` would clash with the generated `CounterHandle::handle`",
            ),
            (
                with_ctor(quote!(
                    pub fn new_with() -> Self {
                        Counter
                    }
                )),
                "`new_with` would clash with the generated `CounterHandle::new_with` \
                 (the options variant of constructor `new`)",
            ),
            (
                quote!(
                    impl<T> Counter<T> {
                        pub fn new() -> Self {
                            todo!()
                        }
                    }
                ),
                "generic actor types",
            ),
            (
                quote!(impl Default for Counter { fn default() -> Self { Counter } }),
                "not on a trait impl",
            ),
            (
                quote!(
                    fn main() {}
                ),
                "goes on the type's inherent `impl` block",
            ),
        ];
        for (item, expected) in cases {
            let msg = error(item.clone());
            assert!(
                msg.contains(expected),
                "{item}: got {msg:?}, expected {expected:?}"
            );
        }
        // Rejections of exported items say how to keep them local.
        let msg = error(with_ctor(quote!(
            pub fn f(&self, s: &str) {}
        )));
        assert!(
            msg.contains("move it to a separate `impl Counter` block"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_attribute_keys_are_rejected() {
        let err = expand_actor(quote!(max_retries = 1), counter())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown #[photon::actor] option `max_retries`"),
            "{err}"
        );
    }

    #[test]
    fn constructor_arguments_named_ctx_do_not_clash() {
        let out = expand(
            quote!(),
            quote!(impl A { pub fn new(ctx: String) -> Self { A } }),
        );
        assert!(
            out.contains(
                "pubfnnew(photon_ctx:&::photon::Context,ctx:impl::photon::IntoArg<String>)"
            ),
            "{out}"
        );
    }
}
