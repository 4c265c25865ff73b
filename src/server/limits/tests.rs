use super::*;

fn counts(total: usize, per_client: usize) -> Counts {
    Counts::new(Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: total,
        max_connections_per_client: per_client,
    })
}

#[test]
fn a_client_over_its_limit_is_refused_and_others_are_not() {
    let c = counts(10, 2);
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let p1 = c.admit(Some(a)).unwrap();
    let _p2 = c.admit(Some(a)).unwrap();
    assert_eq!(c.admit(Some(a)).err(), Some(Refused::Client));
    let _p3 = c.admit(Some(b)).unwrap();
    assert_eq!(c.open(), 3, "a refused connection gives its place back");
    drop(p1);
    let _p4 = c.admit(Some(a)).unwrap();
}

#[test]
fn the_total_limit_counts_every_client() {
    let c = counts(2, 5);
    let _p1 = c.admit(Some("10.0.0.1".parse().unwrap())).unwrap();
    let p2 = c.admit(None).unwrap();
    assert_eq!(
        c.admit(Some("10.0.0.3".parse().unwrap())).err(),
        Some(Refused::Total)
    );
    assert_eq!(c.open(), 2);
    drop(p2);
    assert!(c.admit(None).is_ok());
}

#[test]
fn closed_clients_leave_no_entry() {
    let c = counts(10, 1);
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    drop(c.admit(Some(ip)).unwrap());
    assert!(c.admit(Some(ip)).is_ok());
    assert!(c.per_client.lock().unwrap().len() <= 1);
    drop(c.admit(Some("10.0.0.9".parse().unwrap())));
    assert_eq!(c.open(), 0);
    assert!(c.per_client.lock().unwrap().is_empty());
}
