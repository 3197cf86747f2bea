//! Snapshot of the expansion of one representative model, pretty-printed.

use crate::derive;

#[test]
fn expansion_of_a_representative_model() {
    let input: syn::DeriveInput = syn::parse_quote! {
        #[encrypted(
            table = patients,
            tenant = clinic_id,
            compound_index(name = ssn4_notes, fields(ssn(last4), notes(casefold, prefix(3))), bits = 16)
        )]
        pub struct Patient {
            pub id: i32,
            pub clinic_id: i64,
            #[encrypted]
            pub name: String,
            #[encrypted(blind_index(normalize = email))]
            pub email: String,
            #[encrypted(blind_index(normalize = digits, bits = 16))]
            pub ssn: String,
            #[encrypted]
            pub notes: Option<String>,
        }
    };
    let tokens = derive(&input).unwrap();
    let file: syn::File = syn::parse2(tokens).unwrap();
    insta::assert_snapshot!(prettyplease::unparse(&file));
}
