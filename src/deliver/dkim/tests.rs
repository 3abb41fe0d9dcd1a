use std::os::unix::fs::PermissionsExt;

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use super::*;

fn rsa_pem(bits: u32) -> Vec<u8> {
    let rsa = Rsa::generate(bits).unwrap();
    PKey::from_rsa(rsa)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap()
}

fn ed_pem() -> Vec<u8> {
    PKey::generate_ed25519()
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap()
}

const MSG: &[u8] = b"From: Alice <alice@Example.COM>\r\nTo: bob@example.org\r\nSubject: hi\r\n\
Message-ID: <1@example.com>\r\nX-Other: not signed\r\n\r\nHello\r\n";

#[test]
fn debug_is_redacted() {
    let pem = ed_pem();
    let key = DkimKey::from_pem(&pem).unwrap();
    let s = format!(
        "{key:?} {:?}",
        DkimSigner::new(key.clone(), "s", None).unwrap()
    );
    assert!(s.contains("redacted"), "{s}");
    let b64 = String::from_utf8(pem).unwrap();
    let inner: String = b64.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!s.contains(&inner[..16]));
}

#[test]
fn rejects_wrong_keys() {
    let ec = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
    let ec_pem = PKey::from_ec_key(ec)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    assert!(
        matches!(DkimKey::from_pem(&ec_pem), Err(DkimError::WrongType { ref kind, .. }) if kind == "EC")
    );
    let rsa = Rsa::generate(2048).unwrap();
    let public = rsa.public_key_to_pem().unwrap();
    assert!(matches!(
        DkimKey::from_pem(&public),
        Err(DkimError::NotPrivateKey { .. })
    ));
    assert!(matches!(
        DkimKey::from_pem(b"garbage"),
        Err(DkimError::NotPrivateKey { .. })
    ));
    assert!(matches!(
        DkimKey::from_pem(&rsa_pem(512)),
        Err(DkimError::TooShort { bits: 512, .. })
    ));
    let missing = DkimKey::from_file("/nonexistent/dkim.pem").unwrap_err();
    assert!(matches!(missing, DkimError::Read { .. }));
    assert!(missing.to_string().contains("/nonexistent/dkim.pem"));
}

#[test]
fn warns_on_open_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    std::fs::write(&path, ed_pem()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(DkimKey::from_file(&path).unwrap().warning.is_none());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let w = DkimKey::from_file(&path).unwrap().warning.unwrap();
    assert!(w.to_string().contains("0640"), "{w}");
}

#[test]
fn header_shape() {
    let key = DkimKey::from_pem(&ed_pem()).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
    assert!(
        key.dns_record()
            .unwrap()
            .starts_with("v=DKIM1; k=ed25519; p=")
    );
    let signer = DkimSigner::new(key, "sel1", None).unwrap();
    let h = String::from_utf8(signer.sign(MSG).unwrap()).unwrap();
    assert!(h.starts_with("DKIM-Signature: "), "{h}");
    assert!(h.ends_with("\r\n"));
    let flat: String = h.split_whitespace().collect();
    assert!(flat.contains("a=ed25519-sha256;"), "{flat}");
    assert!(flat.contains("c=relaxed/relaxed;"), "{flat}");
    assert!(flat.contains("d=example.com;"), "{flat}");
    assert!(flat.contains("s=sel1;"), "{flat}");
    let h_tag = flat
        .split(";h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let mut names: Vec<&str> = h_tag.split(':').collect();
    assert_eq!(names.iter().filter(|n| **n == "from").count(), 2, "{h_tag}");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["from", "message-id", "subject", "to"], "{h_tag}");
}

#[test]
fn fixed_domain_and_errors() {
    let key = DkimKey::from_pem(&ed_pem()).unwrap();
    let s = DkimSigner::new(key.clone(), "s", Some("Mail.Example.net")).unwrap();
    let flat: String = String::from_utf8(s.sign(MSG).unwrap())
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(flat.contains("d=mail.example.net;"));
    assert!(DkimSigner::new(key.clone(), "bad selector", None).is_err());
    assert!(DkimSigner::new(key.clone(), "s", Some("-;x")).is_err());
    let s = DkimSigner::new(key, "s", None).unwrap();
    assert!(matches!(
        s.sign(b"To: a@b.c\r\n\r\nx\r\n"),
        Err(DkimError::NoHeaders)
    ));
    assert!(matches!(
        s.sign(b"From: undisclosed\r\n\r\nx\r\n"),
        Err(DkimError::NoFromDomain)
    ));
}

#[test]
fn batch_keeps_order_and_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DkimSigner>();
    assert_send_sync::<DkimKey>();
    let signers = [DkimSigner::new(DkimKey::from_pem(&ed_pem()).unwrap(), "s", None).unwrap()];
    let msgs: Vec<Vec<u8>> = (0..9)
        .map(|i| format!("From: a{i}@ex.com\r\nSubject: {i}\r\n\r\nbody {i}\r\n").into_bytes())
        .collect();
    let out = sign_batch(&signers, &msgs, 3);
    assert_eq!(out.len(), 9);
    for (i, r) in out.iter().enumerate() {
        let one = sign_all(&signers, &msgs[i]).unwrap();
        let bh = |h: &[u8]| {
            let s: String = String::from_utf8(h.to_vec())
                .unwrap()
                .split_whitespace()
                .collect();
            s.split("bh=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(bh(r.as_ref().unwrap()), bh(&one), "message {i}");
    }
}
