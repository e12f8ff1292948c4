//! `#[photon::main]`: makes the program's `main` double as the worker entry point.

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Item, ItemFn};

/// Expands `#[photon::main] fn main() { body }` to `fn main() { ::photon::worker_entry(); body }`.
pub(crate) fn expand_main(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "#[photon::main] takes no arguments",
        ));
    }
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = match syn::parse2::<Item>(item)? {
        Item::Fn(func) => func,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "#[photon::main] goes on `fn main`",
            ));
        }
    };
    if sig.ident != "main" {
        return Err(syn::Error::new_spanned(
            &sig.ident,
            "#[photon::main] goes on `fn main`",
        ));
    }
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "#[photon::main] wraps a plain fn main; build a tokio runtime inside it (or put \
             #[tokio::main] above #[photon::main], which expands it first)",
        ));
    }
    let stmts = &block.stmts;
    // Workers run the same binary: they must branch off before the program's own code runs.
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            ::photon::worker_entry();
            #(#stmts)*
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(item: TokenStream2) -> syn::Result<String> {
        expand_main(quote!(), item).map(|t| t.to_string().replace(' ', ""))
    }

    #[test]
    fn worker_entry_comes_first_and_the_rest_is_kept() {
        let out = expand(quote! {
            #[allow(unused)]
            fn main() -> anyhow::Result<()> { let x = 1; run(x)?; Ok(()) }
        })
        .unwrap();
        assert_eq!(
            out,
            "#[allow(unused)]fnmain()->anyhow::Result<()>\
             {::photon::worker_entry();letx=1;run(x)?;Ok(())}"
        );
        let tokens = expand_main(
            quote!(),
            quote!(
                fn main() {}
            ),
        )
        .unwrap();
        syn::parse2::<syn::File>(tokens).unwrap();
    }

    #[test]
    fn rejections() {
        let msg = expand(quote!(
            async fn main() {}
        ))
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with(
                "#[photon::main] wraps a plain fn main; build a tokio runtime inside it"
            ),
            "{msg}"
        );
        assert_eq!(
            expand(quote!(
                fn start() {}
            ))
            .unwrap_err()
            .to_string(),
            "#[photon::main] goes on `fn main`"
        );
        assert_eq!(
            expand(quote!(
                struct Main;
            ))
            .unwrap_err()
            .to_string(),
            "#[photon::main] goes on `fn main`"
        );
        let msg = expand_main(
            quote!(workers = 2),
            quote!(
                fn main() {}
            ),
        )
        .unwrap_err();
        assert_eq!(msg.to_string(), "#[photon::main] takes no arguments");
    }
}
