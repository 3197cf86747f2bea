//! The models of the derive tests.

use encrypted_types::Encrypted;

use crate::schema;

/// The representative model: five encrypted fields, three of them with blind indexes (one
/// truncated to 16 bits, one nullable), and a tenant.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id)]
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
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits))]
    pub phone: Option<String>,
}

/// A partial update: `None` leaves a column, and its index, as they are (`none = skip`).
#[derive(Encrypted)]
#[encrypted(
    table = schema::et_patients,
    tenant = clinic_id,
    derive(AsChangeset),
    none = skip
)]
pub struct PatientPatch {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted(blind_index(normalize = email))]
    pub email: Option<String>,
    #[encrypted]
    pub notes: Option<String>,
}

impl Patient {
    /// `n` patients alternating between clinics 1 and 2, with emails and SSNs no other test
    /// uses (`label` and a fresh tag tell them apart).
    pub fn several(n: i32, label: &str) -> Vec<Self> {
        let tag = crate::next_id();
        (0..n)
            .map(|i| {
                Self::sample(
                    crate::next_id(),
                    1 + i64::from(i % 2),
                    &format!("{label}{i}-{tag}@Example.org"),
                    // The middle group keeps the digits above 500,000, so the collision
                    // search of the SSN tests (from 0 up) meets a real collision first.
                    &format!("{i:03}-5{}-{tag:04}", label.len() % 10),
                )
            })
            .collect()
    }

    /// A patient of clinic `clinic` with canary plaintexts.
    pub fn sample(id: i32, clinic: i64, email: &str, ssn: &str) -> Self {
        Self {
            id,
            clinic_id: clinic,
            name: format!("{} #{id}", crate::CANARY_NAME),
            email: email.to_owned(),
            ssn: ssn.to_owned(),
            dob: chrono::NaiveDate::from_ymd_opt(1980, 2, 29).unwrap(),
            notes: Some(format!("notes of patient {id}: canary-notes")),
            phone: None,
        }
    }
}

/// The same table during a blind-index key rotation of `email`: new writes index with version
/// 2, lookups also match rows still indexed with version 1.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id)]
pub struct PatientRotating {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email, version = 2, previous = 1))]
    pub email: String,
    #[encrypted(blind_index(normalize = digits, bits = 16))]
    pub ssn: String,
    #[encrypted]
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits))]
    pub phone: Option<String>,
}

/// The same table while the blind-index root key of a tenant is replaced: every index moves
/// to version 2 under the new root; lookups also match version 1 under the retired root.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id)]
pub struct PatientRootReplacing {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email, version = 2, previous(version = 1, root = retired)))]
    pub email: String,
    #[encrypted(blind_index(normalize = digits, bits = 16, version = 2, previous(version = 1, root = retired)))]
    pub ssn: String,
    #[encrypted]
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits, version = 2, previous(version = 1, root = retired)))]
    pub phone: Option<String>,
}

/// After the root replacement: version 2 only, under the new root.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id, derive(Queryable, Selectable))]
pub struct PatientRootReplaced {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email, version = 2))]
    pub email: String,
    #[encrypted(blind_index(normalize = digits, bits = 16, version = 2))]
    pub ssn: String,
    #[encrypted]
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits, version = 2))]
    pub phone: Option<String>,
}

/// After the rotation: version 2 only.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id, derive(Queryable, Selectable))]
pub struct PatientRotated {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email, version = 2))]
    pub email: String,
    #[encrypted(blind_index(normalize = digits, bits = 16))]
    pub ssn: String,
    #[encrypted]
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits))]
    pub phone: Option<String>,
}

/// A record keyed by a PostgreSQL `uuid`.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_uuid_pg, tenant = clinic_id)]
pub struct UuidRecord {
    pub id: uuid::Uuid,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
}

/// The same record where the UUID is 16 bytes in a binary column (MySQL, SQLite).
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_uuid_bin, tenant = clinic_id)]
pub struct BinRecord {
    pub id: Vec<u8>,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
}

/// A visit keyed by `(clinic_id, patient_no)`: an integer and a text part.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(
    table = crate::real_schema::et_visits,
    tenant = clinic_id,
    primary_key(clinic_id, patient_no)
)]
pub struct Visit {
    pub clinic_id: i64,
    pub patient_no: String,
    #[encrypted]
    pub note: String,
    #[encrypted]
    pub code: i16,
    #[encrypted]
    pub ref_id: Option<uuid::Uuid>,
}

/// A blind-index rotation of `ssn` that also changes its length and normalizers: version 1 was
/// `digits` over 16 bits (as [`Patient`] writes it), version 2 is `trim` over all 256 bits.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id)]
pub struct PatientSsnWidening {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
    #[encrypted(blind_index(normalize = trim, version = 2, previous(version = 1, bits = 16, normalize = digits)))]
    pub ssn: String,
    #[encrypted]
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits))]
    pub phone: Option<String>,
}

/// After that rotation: version 2 alone.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = schema::et_patients, tenant = clinic_id)]
pub struct PatientSsnWide {
    pub id: i32,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
    #[encrypted(blind_index(normalize = trim, version = 2))]
    pub ssn: String,
    #[encrypted]
    pub dob: chrono::NaiveDate,
    #[encrypted]
    pub notes: Option<String>,
    #[encrypted(blind_index(normalize = digits))]
    pub phone: Option<String>,
}

/// A patient whose values are bound to its row: a value copied into another row of the same
/// clinic and column fails to open.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_bound, tenant = clinic_id, bind_row = id)]
pub struct BoundPatient {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted(blind_index(normalize = digits))]
    pub ssn: String,
    #[encrypted]
    pub notes: Option<String>,
}

/// A visit bound to its composite key: an integer and a text part.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(
    table = crate::real_schema::et_visits,
    tenant = clinic_id,
    primary_key(clinic_id, patient_no),
    bind_row(clinic_id, patient_no)
)]
pub struct BoundVisit {
    pub clinic_id: i64,
    pub patient_no: String,
    #[encrypted]
    pub note: String,
    #[encrypted]
    pub code: i16,
    #[encrypted]
    pub ref_id: Option<uuid::Uuid>,
}

/// A record bound to its PostgreSQL `uuid` key.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_uuid_pg, tenant = clinic_id, bind_row = id)]
pub struct BoundUuidRecord {
    pub id: uuid::Uuid,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
}

/// A record bound to its UUID key stored as 16 bytes (MySQL, SQLite).
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_uuid_bin, tenant = clinic_id, bind_row = id)]
pub struct BoundBinRecord {
    pub id: Vec<u8>,
    pub clinic_id: i64,
    #[encrypted]
    pub name: String,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
}

/// A contact in the middle of an expand/contract migration from legacy TEXT columns: reads
/// take `email_plain`/`note_plain` while they hold a value, every write seals into
/// `email`/`note` and clears them, and `jobs::encrypt_column` moves the rest.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_contacts, tenant = clinic_id)]
pub struct Contact {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted(blind_index(normalize = email), migrate_from = email_plain)]
    pub email: String,
    #[encrypted(migrate_from = note_plain)]
    pub note: Option<String>,
}

/// The application version before encryption: plain Diesel over `et_staff`'s legacy columns,
/// still running during a rolling deploy.
#[derive(
    Debug,
    Clone,
    PartialEq,
    diesel::Queryable,
    diesel::Selectable,
    diesel::Insertable,
    diesel::AsChangeset,
)]
#[diesel(table_name = crate::real_schema::old::et_staff)]
pub struct OldStaff {
    pub id: i64,
    pub clinic_id: i64,
    pub email: String,
    pub note: Option<String>,
}

/// The version that encrypts: the fields keep their names (and so their context names), the
/// sealed values go to `email_sealed` and `note_sealed` (both spellings of a column name), and
/// the legacy columns, under their old names, are read while they hold a value.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::et_staff, tenant = clinic_id)]
pub struct Staff {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted(column = email_sealed, migrate_from = email, blind_index(normalize = email))]
    pub email: String,
    #[encrypted(migrate_from = note)]
    #[diesel(column_name = note_sealed)]
    pub note: Option<String>,
}

/// After the contract step: the legacy columns dropped and the sealed ones renamed to the
/// fields' names. Same context names, so every stored value and index still matches.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(table = crate::real_schema::contracted::et_staff, tenant = clinic_id)]
pub struct StaffContracted {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted(blind_index(normalize = email))]
    pub email: String,
    #[encrypted]
    pub note: Option<String>,
}

/// The front desk: patients found by surname and date of birth, or by the last four digits of
/// the SSN and the date of birth (compound indexes, truncated so that unrelated rows share
/// index values), besides the SSN's own index; and a prefix index over a nullable field.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(
    table = schema::et_frontdesk,
    tenant = clinic_id,
    compound_index(name = name_dob, fields(last_name(trim, casefold), date_of_birth), bits = 16),
    compound_index(name = ssn4_dob, fields(ssn(last4), date_of_birth), bits = 24),
    compound_index(name = name_phone, fields(last_name(casefold, prefix(3)), phone(digits)))
)]
pub struct FrontDesk {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted]
    pub last_name: String,
    #[encrypted]
    pub date_of_birth: chrono::NaiveDate,
    #[encrypted(blind_index(normalize = digits))]
    pub ssn: String,
    #[encrypted]
    pub phone: Option<String>,
}

/// [`FrontDesk`] while tenants' blind-index root keys are replaced: every index moves to
/// version 2 under the new root; lookups also match version 1 under the retired root.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(
    table = schema::et_frontdesk,
    tenant = clinic_id,
    compound_index(name = name_dob, fields(last_name(trim, casefold), date_of_birth), bits = 16, version = 2, previous(version = 1, root = retired)),
    compound_index(name = ssn4_dob, fields(ssn(last4), date_of_birth), bits = 24, version = 2, previous(version = 1, root = retired)),
    compound_index(name = name_phone, fields(last_name(casefold, prefix(3)), phone(digits)), version = 2, previous(version = 1, root = retired))
)]
pub struct FrontDeskRootReplacing {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted]
    pub last_name: String,
    #[encrypted]
    pub date_of_birth: chrono::NaiveDate,
    #[encrypted(blind_index(normalize = digits, version = 2, previous(version = 1, root = retired)))]
    pub ssn: String,
    #[encrypted]
    pub phone: Option<String>,
}

/// [`FrontDesk`] after the root replacement: version 2 only, under the new root.
#[derive(Clone, PartialEq, Encrypted)]
#[encrypted(
    table = schema::et_frontdesk,
    tenant = clinic_id,
    derive(Queryable, Selectable),
    compound_index(name = name_dob, fields(last_name(trim, casefold), date_of_birth), bits = 16, version = 2),
    compound_index(name = ssn4_dob, fields(ssn(last4), date_of_birth), bits = 24, version = 2),
    compound_index(name = name_phone, fields(last_name(casefold, prefix(3)), phone(digits)), version = 2)
)]
pub struct FrontDeskRootReplaced {
    pub id: i64,
    pub clinic_id: i64,
    #[encrypted]
    pub last_name: String,
    #[encrypted]
    pub date_of_birth: chrono::NaiveDate,
    #[encrypted(blind_index(normalize = digits, version = 2))]
    pub ssn: String,
    #[encrypted]
    pub phone: Option<String>,
}
