use super::*;
use std::time::{Duration, Instant};

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_regular_file_within_its_cap_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t");
    std::fs::write(&p, "token\n").unwrap();
    assert_eq!(read_string(&p, Kind::Credential).unwrap(), "token\n");
}

#[test]
fn a_fifo_is_refused_at_once_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.jws");
    mkfifo(&p);
    let t = Instant::now();
    let e = read(&p, Kind::Record).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(e, ReadError::NotRegular { what: "a FIFO", .. }),
        "{e}"
    );
}

#[test]
fn a_character_device_behind_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.sig");
    std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
    let e = read(&p, Kind::Signature).unwrap_err();
    assert!(
        matches!(
            e,
            ReadError::NotRegular {
                what: "a character device",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_sparse_file_over_the_cap_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.jws");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(1 << 30).unwrap();
    let t = Instant::now();
    let e = read(&p, Kind::Record).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(e, ReadError::TooLarge { limit, .. } if limit == Kind::Record.limit()),
        "{e}"
    );
}

#[test]
fn the_cap_is_exact_and_a_missing_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b"12345").unwrap();
    assert_eq!(read_limited(&p, 5, "x").unwrap(), b"12345");
    assert!(matches!(
        read_limited(&p, 4, "x"),
        Err(ReadError::TooLarge { .. })
    ));
    assert!(read(&dir.path().join("none"), Kind::Keys)
        .unwrap_err()
        .is_not_found());
    assert!(matches!(
        read(dir.path(), Kind::Keys),
        Err(ReadError::NotRegular { .. })
    ));
}
