//! AES-256-GCM-SIV (RFC 8452), the AEAD of suites 2 and 3, composed of the `aes` block cipher
//! and the `polyval` universal hash.
//!
//! Why not the `aes-gcm-siv` crate: it derives each value's keys with six sequential
//! single-block AES calls and moves its cipher state by value, which made it 2.2x (seal) and
//! 2.4x (open) raw AES-256-GCM on a 64-byte value (ADR 0004). Here the six derivation blocks go
//! through AES in one pipelined batch, and the key-stream blocks likewise. The construction is
//! exactly RFC 8452's; the RFC's vectors, Wycheproof's and a cross-check against the
//! `aes-gcm-siv` crate (tests below and in `tests/tests/wycheproof.rs`) hold it to that.

use aes::Aes256Enc;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use ctutils::CtEq;
use polyval::Polyval;
use polyval::universal_hash::UniversalHash;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// One AES block.
type Block = aes::Block;

/// The tag length, in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// RFC 8452 §6: plaintexts and associated data of at most 2³⁶ bytes.
const MAX_LEN: u64 = 1 << 36;

/// Blocks per call into AES: the AES-NI back end's parallel width, so a batch is one pipelined
/// pass rather than a block at a time.
const BATCH: usize = 8;

/// Blocks of AAD, plaintext and lengths hashed in one call when they fit (512 bytes).
const GATHER: usize = 32;

/// The authentication tag could not be verified. Deliberately carries nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejected;

/// An AES-256-GCM-SIV key: the expanded key-generating key. Its round keys are wiped on drop
/// (the `zeroize` feature of `aes`).
#[derive(Clone)]
pub(crate) struct Siv {
    key_generating_key: Aes256Enc,
}

impl Siv {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self {
            key_generating_key: Aes256Enc::new(key.into()),
        }
    }

    /// Encrypts `body` in place and returns the tag, or `Err` when `body` or `aad` exceed the
    /// RFC's 2³⁶-byte limit.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        body: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Rejected> {
        check_lengths(aad, body)?;
        Ok(self.keyed(nonce, |enc, mac| seal_keyed(enc, mac, nonce, aad, body)))
    }

    /// Decrypts `body` in place if `tag` verifies; otherwise `body` is left encrypted.
    pub(crate) fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Rejected> {
        check_lengths(aad, body)?;
        self.keyed(nonce, |enc, mac| {
            open_keyed(enc, mac, nonce, aad, body, tag)
        })
    }

    /// The per-nonce state of `nonce`, derived once for every value of a row sealed or opened
    /// under it (ADR 0004, "One nonce per row").
    pub(crate) fn at_nonce(&self, nonce: &[u8; 12]) -> AtNonce {
        let mut keys = Derived::default();
        self.derive(nonce, &mut keys);
        AtNonce {
            nonce: *nonce,
            enc: Aes256Enc::new((&keys.enc).into()),
            mac: Polyval::new((&keys.mac).into()),
        }
    }

    /// Runs `f` with the message-encryption cipher and the POLYVAL state of `nonce`, built in
    /// place: `Aes256Enc` is 960 bytes (its union holds the software key schedule too), and
    /// every move of it would be a copy.
    #[inline(always)]
    fn keyed<R>(&self, nonce: &[u8; 12], f: impl FnOnce(&Aes256Enc, &mut Polyval) -> R) -> R {
        let mut keys = Derived::default();
        self.derive(nonce, &mut keys);
        let enc = Aes256Enc::new((&keys.enc).into());
        let mut mac = Polyval::new((&keys.mac).into());
        drop(keys);
        f(&enc, &mut mac)
    }

    /// RFC 8452 §4: the message-authentication key is the first halves of AES(counter ‖ nonce)
    /// for counters 0 and 1, the message-encryption key those of counters 2 to 5.
    /// Written into the caller's `keys`, so no copy of them is left behind by a return.
    #[inline(always)]
    fn derive(&self, nonce: &[u8; 12], keys: &mut Derived) {
        // Counters 6 and 7 are computed and thrown away: a full batch is one pipelined pass.
        let mut blocks = [Block::default(); BATCH];
        for (counter, block) in (0u32..).zip(blocks.iter_mut()) {
            let (ctr, rest) = block.split_at_mut(4);
            ctr.copy_from_slice(&counter.to_le_bytes());
            rest.copy_from_slice(nonce);
        }
        self.key_generating_key.encrypt_blocks(&mut blocks);
        for (dst, block) in keys
            .mac
            .chunks_exact_mut(8)
            .chain(keys.enc.chunks_exact_mut(8))
            .zip(&blocks)
        {
            let (half, _) = block.split_at(8);
            dst.copy_from_slice(half);
        }
        for block in &mut blocks {
            block.as_mut_slice().zeroize();
        }
    }
}

/// The message-encryption cipher and POLYVAL key of one nonce: what every value sealed under
/// that nonce shares. Within one nonce GCM-SIV is a deterministic AEAD keyed by these, so values
/// whose AAD differ (a row's columns) reveal nothing about each other; the bytes are exactly
/// RFC 8452's. Both parts wipe themselves on drop (the `zeroize` features of `aes` and
/// `polyval`). Unlike [`Siv::seal`]'s state, built where it is used, this one is returned and
/// boxed, so a stack copy may outlive it until overwritten: keys of this nonce only, which
/// open and forge nothing sealed under another nonce.
pub(crate) struct AtNonce {
    nonce: [u8; 12],
    enc: Aes256Enc,
    mac: Polyval,
}

impl AtNonce {
    /// The nonce the state was derived for.
    pub(crate) fn nonce(&self) -> &[u8; 12] {
        &self.nonce
    }

    /// [`Siv::seal`] under this state's nonce.
    pub(crate) fn seal(&mut self, aad: &[u8], body: &mut [u8]) -> Result<[u8; TAG_LEN], Rejected> {
        check_lengths(aad, body)?;
        Ok(seal_keyed(&self.enc, &mut self.mac, &self.nonce, aad, body))
    }

    /// [`Siv::open`] under this state's nonce.
    pub(crate) fn open(
        &mut self,
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Rejected> {
        check_lengths(aad, body)?;
        open_keyed(&self.enc, &mut self.mac, &self.nonce, aad, body, tag)
    }
}

/// RFC 8452 §4's encryption under derived keys: the tag, then CTR from it.
#[inline(always)]
fn seal_keyed(
    enc: &Aes256Enc,
    mac: &mut Polyval,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
) -> [u8; TAG_LEN] {
    let tag = tag(enc, mac, nonce, aad, body);
    ctr(enc, &tag, body);
    tag
}

/// RFC 8452 §5's decryption under derived keys; `body` is left encrypted if the tag fails.
#[inline(always)]
fn open_keyed(
    enc: &Aes256Enc,
    mac: &mut Polyval,
    nonce: &[u8; 12],
    aad: &[u8],
    body: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), Rejected> {
    ctr(enc, tag, body);
    let expected = self::tag(enc, mac, nonce, aad, body);
    if bool::from(expected.ct_eq(tag)) {
        Ok(())
    } else {
        // CTR is its own inverse: put the ciphertext back, so no unauthenticated plaintext
        // stays in the caller's buffer.
        ctr(enc, tag, body);
        Err(Rejected)
    }
}

/// The per-nonce keys of RFC 8452 §4, wiped on drop.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
struct Derived {
    mac: [u8; 16],
    enc: [u8; 32],
}

/// RFC 8452 §4: POLYVAL over the padded AAD, the padded plaintext and their bit lengths; XOR
/// the nonce; clear the top bit; encrypt.
#[inline(always)]
fn tag(
    enc: &Aes256Enc,
    mac: &mut Polyval,
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> [u8; TAG_LEN] {
    let mut lengths = Block::default();
    let (a, p) = lengths.split_at_mut(8);
    // Lengths are checked against 2³⁶ bytes first, so the bit counts fit in u64.
    a.copy_from_slice(&bit_len(aad).to_le_bytes());
    p.copy_from_slice(&bit_len(plaintext).to_le_bytes());
    let aad_blocks = aad.len().div_ceil(16);
    let blocks = aad_blocks + plaintext.len().div_ceil(16) + 1;
    let mut gathered = [Block::default(); GATHER];
    match gathered.get_mut(..blocks) {
        // A short value: every block in one call, so POLYVAL runs its 4-way aggregated
        // multiply over all of them instead of one reduction per block.
        Some(all) => {
            let (a, rest) = all.split_at_mut(aad_blocks);
            let (p, l) = rest.split_at_mut(blocks - 1 - aad_blocks);
            fill_padded(a, aad);
            fill_padded(p, plaintext);
            l.copy_from_slice(&[lengths]);
            mac.update(all);
            for block in all.iter_mut() {
                block.as_mut_slice().zeroize();
            }
        }
        None => {
            mac.update_padded(aad);
            mac.update_padded(plaintext);
            mac.update(&[lengths]);
        }
    }
    let mut s = mac.finalize_reset();
    for (byte, n) in s.iter_mut().zip(nonce) {
        *byte ^= n;
    }
    if let Some(top) = s.last_mut() {
        *top &= 0x7f;
    }
    enc.encrypt_block(&mut s);
    s.into()
}

/// RFC 8452 §4: AES-CTR from the tag with its top bit set, the first 32 bits a little-endian
/// counter that wraps.
#[inline(always)]
fn ctr(enc: &Aes256Enc, tag: &[u8; TAG_LEN], body: &mut [u8]) {
    // The counter block as a little-endian u128: the counter is its low 32 bits, the rest of
    // the tag (top bit set) the high 96.
    let first = u128::from_le_bytes(*tag) | (1 << 127);
    let fixed = first & !u128::from(u32::MAX);
    let mut counter = first as u32;
    let mut stream = [Block::default(); BATCH];
    for chunk in body.chunks_mut(16 * BATCH) {
        // Always a whole batch, even for a short tail: the AES-NI back end pipelines eight
        // blocks in the time of about two, but runs a partial batch a block at a time.
        for block in &mut stream {
            *block = (fixed | u128::from(counter)).to_le_bytes().into();
            counter = counter.wrapping_add(1);
        }
        enc.encrypt_blocks(&mut stream);
        for (bytes, key) in chunk.chunks_mut(16).zip(stream.iter()) {
            xor_block(bytes, key);
        }
    }
    for block in &mut stream {
        block.as_mut_slice().zeroize();
    }
}

/// `bytes ^= key`, for a whole block as one 128-bit word (a byte loop was 8x slower on 4 KiB
/// values), for a short last block byte by byte.
#[inline(always)]
fn xor_block(bytes: &mut [u8], key: &Block) {
    match <&mut [u8; 16]>::try_from(&mut *bytes) {
        Ok(full) => {
            let x = u128::from_ne_bytes(*full) ^ u128::from_ne_bytes((*key).into());
            *full = x.to_ne_bytes();
        }
        Err(_) => {
            for (b, k) in bytes.iter_mut().zip(key) {
                *b ^= k;
            }
        }
    }
}

/// Copies `bytes` into `blocks`, zero-padding the last.
fn fill_padded(blocks: &mut [Block], bytes: &[u8]) {
    for (block, chunk) in blocks.iter_mut().zip(bytes.chunks(16)) {
        if let Some(dst) = block.get_mut(..chunk.len()) {
            dst.copy_from_slice(chunk);
        }
    }
}

fn check_lengths(aad: &[u8], body: &[u8]) -> Result<(), Rejected> {
    if bit_len(aad) > MAX_LEN * 8 || bit_len(body) > MAX_LEN * 8 {
        Err(Rejected)
    } else {
        Ok(())
    }
}

/// The length in bits; saturates, so anything past the limit compares as too long.
fn bit_len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len())
        .unwrap_or(u64::MAX)
        .saturating_mul(8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm_siv::aead::AeadInOut;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8452 Appendix C.2 (AES-256-GCM-SIV), cases with AAD and several lengths.
    #[test]
    fn rfc_8452_vectors() {
        let cases = [
            // (key, nonce, aad, plaintext, ciphertext ‖ tag)
            (
                "0100000000000000000000000000000000000000000000000000000000000000",
                "030000000000000000000000",
                "",
                "",
                "07f5f4169bbf55a8400cd47ea6fd400f",
            ),
            (
                "0100000000000000000000000000000000000000000000000000000000000000",
                "030000000000000000000000",
                "01",
                "0200000000000000",
                "1de22967237a813291213f267e3b452f02d01ae33e4ec854",
            ),
            (
                "e66021d5eb8e4f4066d4adb9c33560e4f46e44bb3da0015c94f7088736864200",
                "e0eaf5284d884a0e77d31646",
                "",
                "",
                "169fbb2fbf389a995f6390af22228a62",
            ),
            (
                "0100000000000000000000000000000000000000000000000000000000000000",
                "030000000000000000000000",
                "010000000000000000000000000000000200",
                "0300000000000000000000000000000004000000",
                "43dd0163cdb48f9fe3212bf61b201976067f342bb879ad976d8242acc188ab59\
                 cabfe307",
            ),
        ];
        for (key, nonce, aad, pt, expected) in cases {
            let siv = Siv::new(&hex(key).try_into().unwrap());
            let nonce: [u8; 12] = hex(nonce).try_into().unwrap();
            let (aad, pt) = (hex(aad), hex(pt));
            let mut body = pt.clone();
            let tag = siv.seal(&nonce, &aad, &mut body).unwrap();
            let mut got = body.clone();
            got.extend_from_slice(&tag);
            assert_eq!(got, hex(expected), "seal");
            siv.open(&nonce, &aad, &mut body, &tag).unwrap();
            assert_eq!(body, pt, "open");
        }
    }

    /// Every length from 0 to 300 bytes (partial and full batches, partial blocks) and several
    /// AAD lengths, against the `aes-gcm-siv` crate.
    #[test]
    fn matches_the_aes_gcm_siv_crate() {
        let key = [0x5a; 32];
        let nonce = [0xa5; 12];
        let ours = Siv::new(&key);
        let theirs = aes_gcm_siv::AesGcmSiv::<Aes256Enc>::new((&key).into());
        for aad_len in [0usize, 1, 16, 17, 90, 300] {
            let aad: Vec<u8> = (0..aad_len).map(|i| (i * 7) as u8).collect();
            for len in 0..300usize {
                let pt: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
                let (sealed, tag) = same_as_the_crate(&ours, &theirs, &nonce, &aad, &pt);
                let mut a = sealed;
                ours.open(&nonce, &aad, &mut a, &tag).unwrap();
                assert_eq!(a, pt);
            }
        }
    }

    /// Seals `pt` with both implementations, checks they agree, and returns ours.
    fn same_as_the_crate(
        ours: &Siv,
        theirs: &aes_gcm_siv::AesGcmSiv<Aes256Enc>,
        nonce: &[u8; 12],
        aad: &[u8],
        pt: &[u8],
    ) -> (Vec<u8>, [u8; TAG_LEN]) {
        let mut a = pt.to_vec();
        let tag = ours.seal(nonce, aad, &mut a).unwrap();
        let mut b = pt.to_vec();
        let their_tag = theirs
            .encrypt_inout_detached(&(*nonce).into(), aad, b.as_mut_slice().into())
            .unwrap();
        assert_eq!(
            (a.as_slice(), tag.as_slice()),
            (b.as_slice(), &their_tag[..])
        );
        (a, tag)
    }

    #[test]
    fn a_wrong_tag_leaves_the_ciphertext() {
        let siv = Siv::new(&[1; 32]);
        let nonce = [2; 12];
        let mut sealed = b"sixteen byte msg and more".to_vec();
        let tag = siv.seal(&nonce, b"aad", &mut sealed).unwrap();
        let mut flipped_body = sealed.clone();
        flipped_body[3] ^= 0x40;
        let mut flipped_tag = tag;
        flipped_tag[15] ^= 1;
        for (case, mut body, aad, tag) in [
            ("body", flipped_body, b"aad", tag),
            ("aad", sealed.clone(), b"aae", tag),
            ("tag", sealed.clone(), b"aad", flipped_tag),
        ] {
            let before = body.clone();
            assert_eq!(
                siv.open(&nonce, aad, &mut body, &tag),
                Err(Rejected),
                "{case}"
            );
            assert_eq!(body, before, "{case}: the ciphertext is put back");
        }
        siv.open(&nonce, b"aad", &mut sealed, &tag).unwrap();
        assert_eq!(sealed, b"sixteen byte msg and more");
    }

    #[test]
    fn the_counter_wraps_at_32_bits() {
        // A tag whose counter word is 0xffff_fffa, with arbitrary bytes in the rest of the
        // block: 200 bytes of key stream run through the wrap and across a batch boundary.
        let siv = Siv::new(&[9; 32]);
        let mut keys = Derived::default();
        siv.derive(&[4; 12], &mut keys);
        let enc = Aes256Enc::new((&keys.enc).into());
        let mut tag: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) | 1);
        tag[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        let mut ours = vec![0u8; 200];
        ctr(&enc, &tag, &mut ours);
        let mut expected = Vec::new();
        let mut counter = 0xffff_fffau32;
        while expected.len() < 200 {
            let mut b = Block::from(tag);
            b[..4].copy_from_slice(&counter.to_le_bytes());
            b[15] |= 0x80;
            enc.encrypt_block(&mut b);
            expected.extend_from_slice(&b);
            counter = counter.wrapping_add(1);
        }
        expected.truncate(200);
        assert_eq!(ours, expected);
    }

    /// Above the 512 bytes hashed in one call (the `update_padded` path), with no AAD and with
    /// some, and a tampered value there is put back as it was.
    #[test]
    fn long_values_match_the_crate_and_restore_on_failure() {
        let key = [0x33; 32];
        let nonce = [0x44; 12];
        let ours = Siv::new(&key);
        let theirs = aes_gcm_siv::AesGcmSiv::<Aes256Enc>::new((&key).into());
        for aad_len in [0usize, 20] {
            let aad = vec![0x11; aad_len];
            for len in [480usize, 495, 496, 497, 511, 512, 513, 600, 1000] {
                let pt: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
                let (mut a, tag) = same_as_the_crate(&ours, &theirs, &nonce, &aad, &pt);
                let mut bad = a.clone();
                bad[len - 1] ^= 1;
                let before = bad.clone();
                assert_eq!(ours.open(&nonce, &aad, &mut bad, &tag), Err(Rejected));
                assert_eq!(bad, before);
                ours.open(&nonce, &aad, &mut a, &tag).unwrap();
                assert_eq!(a, pt);
            }
        }
    }

    /// One per-nonce state, reused for many values of different lengths and AADs (as a row's
    /// fields are), gives exactly the bytes of each value sealed alone; a failed open leaves it
    /// usable for the next value.
    #[test]
    fn a_state_reused_across_values_matches_sealing_each_alone() {
        let siv = Siv::new(&[0x21; 32]);
        let nonce = [7u8; 12];
        let mut state = siv.at_nonce(&nonce);
        for (len, aad_len) in [
            (0usize, 0usize),
            (15, 60),
            (25, 61),
            (11, 59),
            (200, 64),
            (600, 1),
        ] {
            let aad: Vec<u8> = (0..aad_len).map(|i| (i * 3 + len) as u8).collect();
            let plain: Vec<u8> = (0..len).map(|i| (i * 5) as u8).collect();
            let (mut a, mut b) = (plain.clone(), plain.clone());
            let ta = state.seal(&aad, &mut a).unwrap();
            let tb = siv.seal(&nonce, &aad, &mut b).unwrap();
            assert_eq!((&a, ta), (&b, tb), "len {len}");
            let mut bad = ta;
            bad[0] ^= 1;
            assert_eq!(state.open(&aad, &mut a, &bad), Err(Rejected));
            assert_eq!(a, b, "the ciphertext is put back");
            state.open(&aad, &mut a, &ta).unwrap();
            assert_eq!(a, plain);
        }
    }
}
