use super::*;

/// Races a connection that never ends by itself against its phase's deadline: what it was
/// cut waiting for, and after how long.
async fn cut(phase: &Arc<Phase>, conn: impl std::future::Future<Output = ()>) -> (Wait, Duration) {
    let t = Instant::now();
    let mut waited = None;
    let ended = phase.run(conn, |w| waited = Some(w)).await;
    assert!(ended.is_none(), "the connection never ends by itself");
    (waited.unwrap(), t.elapsed())
}

#[tokio::test(start_paused = true)]
async fn headers_are_due_within_the_header_timeout() {
    let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(60));
    assert_eq!(
        cut(&phase, std::future::pending()).await,
        (Wait::Headers, Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_progress_has_no_deadline_and_idle_follows_it() {
    let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(60));
    let conn = async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        request_started();
        // Served for far longer than either timeout.
        tokio::time::sleep(Duration::from_secs(600)).await;
        request_finished();
        // Then idle forever.
        std::future::pending::<()>().await;
    };
    let (wait, after) = cut(&phase, conn).await;
    assert_eq!(wait, Wait::Idle);
    assert_eq!(after, Duration::from_secs(5 + 600 + 60));
}

#[tokio::test(start_paused = true)]
async fn marks_outside_a_connection_do_nothing() {
    request_started();
    request_finished();
}

#[tokio::test(start_paused = true)]
async fn an_idle_deadline_before_the_header_deadline_is_kept() {
    // The waiter sleeps until the header deadline (60 s); the first request finishes at
    // 5 s, so the connection is due idle at 15 s, not at 60.
    let phase = Phase::new(Duration::from_secs(60), Duration::from_secs(10));
    let conn = async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        request_started();
        tokio::time::sleep(Duration::from_secs(1)).await;
        request_finished();
        std::future::pending::<()>().await;
    };
    let (wait, after) = cut(&phase, conn).await;
    assert_eq!(wait, Wait::Idle);
    assert_eq!(after, Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_requests_keep_pushing_the_deadline_back() {
    let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(10));
    let conn = async move {
        // A request every 6 s for a minute, each served in 1 s: never 10 s idle.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            request_started();
            tokio::time::sleep(Duration::from_secs(1)).await;
            request_finished();
        }
        std::future::pending::<()>().await;
    };
    let (wait, after) = cut(&phase, conn).await;
    assert_eq!(wait, Wait::Idle);
    assert_eq!(after, Duration::from_secs(60 + 10));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_ends_is_its_own_output() {
    let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(10));
    let out = phase
        .run(
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                request_started();
                request_finished();
                7
            },
            |w| panic!("cut waiting for {w:?}"),
        )
        .await;
    assert_eq!(out, Some(7));
}

#[tokio::test(start_paused = true)]
async fn a_request_served_past_a_fired_timer_rearms_it_when_done() {
    // The header timer (10 s) fires while the first request is served (2 s to 30 s): the
    // connection is not cut then, and is cut 5 s after the request ends.
    let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(5));
    let conn = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        request_started();
        tokio::time::sleep(Duration::from_secs(28)).await;
        request_finished();
        std::future::pending::<()>().await;
    };
    assert_eq!(
        cut(&phase, conn).await,
        (Wait::Idle, Duration::from_secs(35))
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_spends_its_coop_budget_is_still_cut() {
    // Its first poll spends the task's whole coop budget (as a busy connection's reads and
    // writes can) and yields with none left, so the first look arms the timer then. A timer
    // polled without budget registers nothing, and is not polled again until it fires.
    let phase = Phase::new(Duration::from_secs(10), Duration::from_secs(10));
    let conn = async {
        for _ in 0..1000 {
            tokio::task::consume_budget().await;
        }
        std::future::pending::<()>().await;
    };
    let cut = tokio::time::timeout(Duration::from_secs(60), cut(&phase, conn)).await;
    assert_eq!(
        cut.expect("never cut"),
        (Wait::Headers, Duration::from_secs(10))
    );
}
