//! Each object-store emulator the test kit starts answers on the address it reported, serves
//! what it was given, and is gone once its guard drops.

use std::io::{Read, Write};
use std::net::TcpStream;

use vidx_testkit::azurite::Azurite;
use vidx_testkit::gcs::FakeGcs;
use vidx_testkit::s3::S3Server;

/// `GET path` over HTTP/1.0 to `base` (`http://HOST:PORT`); the whole response.
fn get(base: &str, path: &str) -> String {
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn refused(base: &str) -> bool {
    TcpStream::connect(base.strip_prefix("http://").unwrap()).is_err()
}

#[test]
fn fake_gcs_serves_its_data_folder_as_buckets() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("videos/corpus")).unwrap();
    std::fs::write(data.path().join("videos/corpus/a.mp4"), b"twelve bytes").unwrap();
    let gcs = FakeGcs::start(data.path())
        .expect("fake-gcs-server starts (run scripts/install-test-servers.sh)");
    let base = gcs.base_url();
    let listing = get(&base, "/storage/v1/b/videos/o");
    assert!(listing.starts_with("HTTP/1.0 200"), "{listing}");
    assert!(listing.contains("corpus/a.mp4"), "{listing}");
    assert_eq!(gcs.env()[0], ("GOOGLE_BASE_URL".to_owned(), base.clone()));
    drop(gcs);
    assert!(refused(&base));
}

#[test]
fn azurite_reports_the_port_it_bound() {
    let azurite = Azurite::start().expect("azurite starts (run scripts/install-test-servers.sh)");
    let base = azurite.endpoint().to_owned();
    assert!(!base.ends_with(":0"), "{base}");
    // An unauthenticated listing is refused by the emulator itself, not the network.
    let response = get(&base, "/devstoreaccount1?comp=list");
    assert!(response.starts_with("HTTP/1.1 "), "{response}");
    assert!(azurite.connection_string().contains(&base));
    drop(azurite);
    assert!(refused(&base));
}

#[test]
fn s3s_fs_answers_on_its_reported_endpoint() {
    let s3 = S3Server::start().expect("s3s-fs starts (run scripts/install-test-servers.sh)");
    let base = s3.endpoint().to_owned();
    let response = get(&base, "/");
    assert!(response.starts_with("HTTP/1."), "{response}");
    drop(s3);
    assert!(refused(&base));
}
