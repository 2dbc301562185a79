//! `#[derive(ShmSafe)]` for [shmsync](https://docs.rs/shmsync).
//!
//! Use it through shmsync's `derive` feature (`shmsync::ShmSafe` is both the
//! trait and this derive); the generated code names `::shmsync`, so this
//! crate is not meant to be depended on directly. What the derive accepts,
//! refuses and computes is documented on `shmsync::ShmSafe`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, parse_quote, Data, DeriveInput, Fields, GenericParam, Ident, LitInt, LitStr,
    Member, Path, Type,
};

/// Derives `shmsync::ShmSafe` for a `#[repr(C)]` or `#[repr(transparent)]`
/// struct whose fields are all `ShmSafe`, computing its `TYPE_TAG` from its
/// name and layout. See `shmsync::ShmSafe` for the rules and the `#[shm(...)]`
/// options.
#[proc_macro_derive(ShmSafe, attributes(shm))]
pub fn derive_shm_safe(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The `#[shm(...)]` options.
struct Options {
    version: Option<LitInt>,
    tag: Option<LitInt>,
    krate: Path,
}

fn parse_options(input: &DeriveInput) -> syn::Result<Options> {
    let mut options = Options {
        version: None,
        tag: None,
        krate: parse_quote!(::shmsync),
    };
    let mut krate_seen = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("shm")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("version") {
                let lit: LitInt = meta.value()?.parse()?;
                lit.base10_parse::<u32>()?;
                if options.version.replace(lit).is_some() {
                    return Err(meta.error("`version` given twice"));
                }
            } else if meta.path.is_ident("tag") {
                let lit: LitInt = meta.value()?.parse()?;
                lit.base10_parse::<u64>()?;
                if options.tag.replace(lit).is_some() {
                    return Err(meta.error("`tag` given twice"));
                }
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                options.krate = lit.parse()?;
                if std::mem::replace(&mut krate_seen, true) {
                    return Err(meta.error("`crate` given twice"));
                }
            } else {
                return Err(meta.error(
                    "unknown `shm` option: expected `version = N`, `tag = N` or `crate = \"path\"`",
                ));
            }
            Ok(())
        })?;
    }
    Ok(options)
}

/// What `#[repr(...)]` says.
#[derive(Default)]
struct Repr {
    c: bool,
    transparent: bool,
    packed: Option<Span>,
}

fn parse_repr(input: &DeriveInput) -> syn::Result<Repr> {
    let mut repr = Repr::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("C") {
                repr.c = true;
            } else if meta.path.is_ident("transparent") {
                repr.transparent = true;
            } else if meta.path.is_ident("packed") {
                repr.packed = Some(meta.path.span());
            }
            // `align(N)` and anything else: skip its arguments, if any.
            if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<TokenStream>()?;
            }
            Ok(())
        })?;
    }
    Ok(repr)
}

/// Refuses field types that are never `ShmSafe` with a message naming the
/// field and what to use instead. Other types are left to the trait-bound
/// check, whose error points at the field's type.
fn check_field_type(field: &str, ty: &Type) -> syn::Result<()> {
    let refuse = |what: &str, instead: &str| {
        Err(syn::Error::new_spanned(
            ty,
            format!(
                "#[derive(ShmSafe)]: field `{field}` is {what}, which cannot live in shared memory; {instead}"
            ),
        ))
    };
    match ty {
        Type::Reference(_) => refuse(
            "a reference",
            "an address means nothing in another process: store an index or an offset",
        ),
        Type::Ptr(_) => refuse(
            "a raw pointer",
            "an address means nothing in another process: store an index or an offset",
        ),
        Type::FnPtr(_) => refuse(
            "a function pointer",
            "code addresses differ between processes: store a number naming the function",
        ),
        Type::TraitObject(_) | Type::ImplTrait(_) | Type::Slice(_) => refuse(
            "not of a fixed size",
            "use a fixed-size array `[T; N]` of a `ShmSafe` type",
        ),
        Type::Never(_) => refuse("`!`", "a value of it can never exist"),
        Type::Array(array) => check_field_type(field, &array.elem),
        Type::Paren(inner) => check_field_type(field, &inner.elem),
        Type::Group(inner) => check_field_type(field, &inner.elem),
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("bool") => refuse(
            "`bool`",
            "a process killed mid-write may leave any byte, and a `bool` other than 0 or 1 is undefined behaviour: use `u8` and test `!= 0`",
        ),
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("char") => refuse(
            "`char`",
            "a process killed mid-write may leave any bits, and a `char` outside Unicode is undefined behaviour: use `u32` and `char::from_u32`",
        ),
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("str") => refuse(
            "`str`",
            "use a fixed-size byte array `[u8; N]` and a length",
        ),
        _ => Ok(()),
    }
}

fn expand(mut input: DeriveInput) -> syn::Result<TokenStream> {
    let name = input.ident.clone();
    let data = match &input.data {
        Data::Struct(data) => data,
        Data::Enum(data) => {
            return Err(syn::Error::new(
                data.enum_token.span,
                format!(
                    "#[derive(ShmSafe)] refuses the enum `{name}`: a process killed mid-write may leave a discriminant that names no variant (undefined behaviour); use an integer field and convert it with a checked match"
                ),
            ))
        }
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span,
                format!(
                    "#[derive(ShmSafe)] refuses the union `{name}`: it cannot check which field is meant; use a struct, or implement `ShmSafe` by hand (`unsafe impl`) after checking every field"
                ),
            ))
        }
    };

    let repr = parse_repr(&input)?;
    if let Some(span) = repr.packed {
        return Err(syn::Error::new(
            span,
            format!(
                "#[derive(ShmSafe)] refuses `{name}`: `repr(packed)` fields may be unaligned, so references to them (and atomics in them) are unusable; use `#[repr(C)]` and, to avoid padding, add explicit padding fields"
            ),
        ));
    }
    if !repr.c && !repr.transparent {
        return Err(syn::Error::new(
            name.span(),
            format!(
                "#[derive(ShmSafe)] needs `#[repr(C)]` (or `#[repr(transparent)]`) on `{name}`: Rust's default layout may differ between builds, and every process must agree on it"
            ),
        ));
    }

    let options = parse_options(&input)?;
    let krate = &options.krate;

    // Lifetime parameters cannot be 'static-only borrows worth having:
    // refuse them. Type parameters get a `ShmSafe` bound.
    let mut errors: Option<syn::Error> = None;
    let mut push = |err: syn::Error| match &mut errors {
        Some(all) => all.combine(err),
        None => errors = Some(err),
    };
    for param in &input.generics.params {
        if let GenericParam::Lifetime(lt) = param {
            push(syn::Error::new_spanned(
                lt,
                format!(
                    "#[derive(ShmSafe)] refuses the lifetime parameter on `{name}`: a value in shared memory outlives every borrow"
                ),
            ));
        }
    }

    let fields: Vec<(Member, String, &Type)> = match &data.fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                let ident = f.ident.clone().expect("named field");
                let label = ident.unraw().to_string();
                (Member::Named(ident), label, &f.ty)
            })
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| (Member::from(i), i.to_string(), &f.ty))
            .collect(),
        Fields::Unit => Vec::new(),
    };
    for (_, label, ty) in &fields {
        if let Err(err) = check_field_type(label, ty) {
            push(err);
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }

    // Clone what the generated items need before the generics change.
    let fields: Vec<(Member, String, Type)> = fields
        .into_iter()
        .map(|(m, l, t)| (m, l, t.clone()))
        .collect();
    for param in input.generics.type_params_mut() {
        param.bounds.push(parse_quote!(#krate::ShmSafe));
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    // Each field's type is read through `__private::Field<marker>`, where
    // the marker is a unit struct named after the field: the trait exists
    // only for `ShmSafe` types, and its error message names the field. The
    // tokens are spanned on the field's type, so the error points there.
    // (Spanned at the call site: lints about the markers are not the
    // user's to fix.)
    let markers: Vec<Ident> = fields
        .iter()
        .map(|(member, _, _)| {
            let mut marker = match member {
                Member::Named(ident) => ident.clone(),
                Member::Unnamed(index) => format_ident!("_{}", index.index),
            };
            marker.set_span(Span::call_site());
            marker
        })
        .collect();
    let field_info = |ty: &Type, marker: &Ident, item: &str| {
        let item = Ident::new(item, Span::call_site());
        quote_spanned! {ty.span()=>
            <#ty as #krate::__private::Field<__shmsync_fields::#marker>>::#item
        }
    };
    let sizes: Vec<TokenStream> = fields
        .iter()
        .zip(&markers)
        .map(|((_, _, ty), marker)| field_info(ty, marker, "SIZE"))
        .collect();
    let paddings: Vec<TokenStream> = fields
        .iter()
        .zip(&markers)
        .map(|((_, _, ty), marker)| field_info(ty, marker, "HAS_PADDING"))
        .collect();

    let name_str = LitStr::new(&name.unraw().to_string(), name.span());
    let tag = match &options.tag {
        Some(tag) => quote!(#tag),
        None => {
            let steps = fields.iter().zip(&markers).zip(&sizes).map(
                |(((member, label, ty), marker), size)| {
                    let field_tag = field_info(ty, marker, "TAG");
                    let field_version = field_info(ty, marker, "VERSION");
                    quote! {
                        let tag = tag.field(
                            #label,
                            ::core::mem::offset_of!(Self, #member),
                            #size,
                            #field_tag,
                            #field_version,
                        );
                    }
                },
            );
            quote! {{
                let tag = #krate::__private::TagHasher::new(#name_str);
                #(#steps)*
                tag.finish(::core::mem::size_of::<Self>(), ::core::mem::align_of::<Self>())
            }}
        }
    };
    let version = match &options.version {
        Some(version) => quote!(#version),
        None => quote!(0),
    };
    let drop_message = format!(
        "#[derive(ShmSafe)]: `{name}` must not implement Drop: shmsync never drops a value in shared memory"
    );

    // A non-generic type's constants are evaluated right here, so that a
    // `Drop` impl is refused where the type is defined; a generic type's
    // when a cell of it is made or opened.
    let force = if input.generics.params.is_empty() {
        quote! {
            const _: u64 = <#name as #krate::ShmSafe>::TYPE_TAG;
        }
    } else {
        TokenStream::new()
    };

    let self_ty = quote!(#name #ty_generics);
    Ok(quote! {
        const _: () = {
            /// One marker per field, named after it, for error messages.
            #[allow(
                dead_code,
                non_camel_case_types,
                unreachable_pub,
                missing_docs,
                missing_debug_implementations,
                missing_copy_implementations
            )]
            mod __shmsync_fields {
                #(pub struct #markers;)*
            }

            // SAFETY (generated by #[derive(ShmSafe)]): a struct (not an
            // enum or union) with `repr(C)` or `repr(transparent)` and not
            // packed, whose every field is `ShmSafe` (each is read through
            // `Field`, implemented only for `ShmSafe` types; type parameters
            // are bounded), with no `Drop` (asserted in TYPE_TAG).
            #[automatically_derived]
            unsafe impl #impl_generics #krate::ShmSafe for #self_ty #where_clause {
                const TYPE_TAG: u64 = {
                    ::core::assert!(!::core::mem::needs_drop::<Self>(), #drop_message);
                    #tag
                };
                const TYPE_VERSION: u32 = #version;
                const HAS_PADDING: bool = {
                    let fields_size: usize = 0 #( + #sizes )*;
                    fields_size != ::core::mem::size_of::<Self>() #( || #paddings )*
                };
            }

            #force
        };
    }
    .into_token_stream())
}
