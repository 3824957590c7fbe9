"""The trainer link's per-job machine (:mod:`agent.link.jobs`) against an in-process twin of
the trainer's side (tests/agent/link_twin.py: the trainer's own job machine), no sockets."""

from __future__ import annotations

from agent.link import jobs as lj
from tests.agent.link_twin import Talk, Twin, apply, converse
from trainer import jobs as tj

RETRIES = 2


def new_job(**kw: object) -> lj.LinkJob:
    return lj.LinkJob(1, "/exports/job-1", "p", "c", **kw)  # type: ignore[arg-type]


def test_upload_resumes_after_an_agent_restart_with_only_what_the_trainer_lacks() -> None:
    twin = Twin(missing=5)
    talk = converse(Talk(new_job()), twin)
    assert talk.rec.phase is lj.Phase.UPLOAD and talk.rec.key == twin.job.key
    assert [e for e in talk.effects if isinstance(e, lj.Save)]  # the key is recorded
    twin.receive(2)  # two chunks made it, then the agent went down
    saved = talk.rec
    again = Talk(lj.LinkJob.from_json(saved.to_json()))
    apply(again, lj.Started(in_store=False, staged=False))
    assert again.rec == saved and again.effects == []  # nothing re-offered or dropped
    converse(again, twin)
    (upload,) = [e for e in again.effects if isinstance(e, lj.Upload)]
    assert upload.need == {"export": {"data.npy": [[0, 3]]}}  # only the rest is asked for
    twin.receive(3)
    converse(again, twin)
    assert again.rec.phase is lj.Phase.WAIT
    assert ("queued", {"detail": ""}) in again.reports


def test_result_fetched_verified_handed_on_once_and_acknowledged() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    talk = converse(Talk(new_job()), twin)
    assert talk.rec.phase is lj.Phase.WAIT
    twin.train("improved", "0123456789abcdef")
    converse(talk, twin)
    assert talk.rec.phase is lj.Phase.DONE and talk.rec.bundle_id == "0123456789abcdef"
    assert talk.offers == 1 and all(s != "failed" for s, _ in talk.reports)
    assert twin.state == "acknowledged" and twin.acks == [{"refused": ""}]
    # a later start does not offer it again once the daemon holds it
    apply(talk, lj.Started(in_store=True, staged=True))
    assert talk.offers == 1 and any(isinstance(e, lj.DropStaging) for e in talk.effects[-1:])


def test_an_unusable_result_header_is_refused_and_the_job_fails() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    talk = converse(Talk(new_job()), twin)
    twin.train("improved", "0123456789abcdef")
    apply(talk, lj.TrainerState("done"))
    assert talk.rec.phase is lj.Phase.FETCH
    apply(talk, lj.Result("improved", "", "0123456789abcdef", error="chunk_bytes too large"))
    assert talk.rec.phase is lj.Phase.ACK and talk.offers == 0
    assert talk.reports[-1] == ("failed", {"error": "result refused: chunk_bytes too large"})


def test_download_retry_budget_exhausted_fails_the_job_and_tells_the_trainer() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    talk = converse(Talk(new_job()), twin)
    twin.train("improved", "0123456789abcdef")
    converse(talk, twin, download_ok=False)
    assert talk.rec.phase is lj.Phase.FETCH and twin.state == "delivered"
    holds = []
    for _ in range(RETRIES):
        apply(talk, lj.FetchFailed("sha256 mismatch", RETRIES, 1.0, 30.0))
        holds += [e.seconds for e in talk.effects if isinstance(e, lj.Hold)][-1:]
    assert holds == [1.0, 2.0] and talk.rec.phase is lj.Phase.FETCH  # backing off, doubling
    apply(talk, lj.FetchFailed("sha256 mismatch", RETRIES, 1.0, 30.0))
    assert talk.rec.phase is lj.Phase.ACK and "after 3 tries" in talk.rec.refused
    assert talk.reports[-1][0] == "failed" and any(
        isinstance(e, lj.DropStaging) for e in talk.effects
    )
    converse(talk, twin)
    assert talk.rec.phase is lj.Phase.DONE and talk.offers == 0
    assert twin.state == "acknowledged" and "after 3 tries" in twin.acks[-1]["refused"]


def test_cancel_while_training_stops_the_job_and_nothing_is_reported_after_it() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    talk = converse(Talk(new_job()), twin)
    twin.step(tj.Started())
    converse(talk, twin)
    apply(talk, lj.Cancel())
    assert talk.rec.phase is lj.Phase.CANCEL
    apply(talk, lj.Progress({"step": 5}))  # in flight when the cancel went out
    apply(talk, lj.TrainerState("training"))
    converse(talk, twin)
    assert talk.rec.phase is lj.Phase.CANCELLED and twin.state == "cancelled"
    after = [s for s, _ in talk.reports][talk.reports.index(("training", {"detail": ""})) + 1 :]
    assert after == ["cancelled"]
    apply(talk, lj.Cancel())  # again: nothing more
    assert talk.rec.phase is lj.Phase.CANCELLED


def test_a_job_finished_before_its_cancel_is_released_unfetched() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    talk = converse(Talk(new_job()), twin)
    twin.train("improved", "0123456789abcdef")
    apply(talk, lj.Cancel())
    converse(talk, twin)
    assert talk.rec.phase is lj.Phase.CANCELLED and talk.offers == 0
    assert twin.state == "acknowledged"
    assert talk.reports[-1] == ("cancelled", {"trainer_state": "acknowledged"})


def test_trainer_says_failed_the_job_fails_with_its_reason_and_is_acknowledged() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    talk = converse(Talk(new_job()), twin)
    twin.train("failed", detail="CUDA out of memory")
    converse(talk, twin)
    assert talk.rec.phase is lj.Phase.DONE and talk.offers == 0
    assert ("failed", {"error": "CUDA out of memory"}) in talk.reports
    assert twin.state == "acknowledged"


def test_trainer_refusing_the_submit_fails_the_job_without_a_trainer_job() -> None:
    talk = Talk(new_job())
    apply(talk, lj.TrainerError("parent_missing", "submit", "parent p not uploaded"))
    assert talk.rec.phase is lj.Phase.FAILED
    assert talk.reports == [("failed", {"error": "parent p not uploaded"})]


def test_result_never_imported_is_offered_again_then_given_up() -> None:
    rec = new_job(phase=lj.Phase.DONE, key="k", bundle_id="0123456789abcdef", offers=1)
    talk = Talk(rec)
    for _ in range(lj.MAX_OFFERS - 1):
        apply(talk, lj.Started(in_store=False, staged=True))
    assert talk.offers == lj.MAX_OFFERS - 1 and talk.rec.offers == lj.MAX_OFFERS
    apply(talk, lj.Started(in_store=False, staged=True))
    assert talk.reports[-1][0] == "failed" and talk.rec.released
    apply(talk, lj.Started(in_store=False, staged=True))
    assert talk.offers == lj.MAX_OFFERS - 1  # released: never again


def test_records_of_the_earlier_format_load_with_the_cancel_as_a_phase() -> None:
    old = {"job": 3, "export": "/e", "parent_id": "p", "condition": "c", "phase": "ack"}
    old |= {"outcome": "improved", "detail": "x", "cancelled": True, "offers": 1}
    assert lj.LinkJob.from_json(old).phase is lj.Phase.RELEASE


# -- the export on the robot (issue 13, item 6) ------------------------------------------------


def test_export_removed_once_the_trainer_holds_the_dataset_and_never_sent_again() -> None:
    twin = Twin(missing=4)
    talk = converse(Talk(new_job()), twin)
    assert talk.rec.phase is lj.Phase.UPLOAD and not talk.rec.export_removed
    assert not any(isinstance(e, lj.DropExport) for e in talk.effects)  # still to send
    twin.receive(4)
    n = len(talk.effects)
    converse(talk, twin)
    assert talk.rec.phase is lj.Phase.WAIT and talk.rec.export_removed
    new = talk.effects[n:]
    drops = [i for i, e in enumerate(new) if isinstance(e, lj.DropExport)]
    saves = [i for i, e in enumerate(new) if isinstance(e, lj.Save)]
    assert len(drops) == 1 and saves and saves[0] < drops[0]  # recorded, then removed
    # a stale "receiving" does not send it back to UPLOAD (there is nothing left to send)
    apply(talk, lj.TrainerState("receiving"))
    assert talk.rec.phase is lj.Phase.WAIT
    # the trainer then lost the job: it cannot be submitted again, so it fails
    apply(talk, lj.TrainerError("unknown_job", "status"))
    assert talk.rec.phase is lj.Phase.FAILED
    assert "export was removed" in talk.reports[-1][1]["error"]


def test_verdict_without_queueing_removes_the_export_and_a_forgotten_ack_ends_done() -> None:
    twin = Twin(missing=0)
    twin.step(tj.DataComplete(seq=1))
    twin.train("no_improvement", detail="no gain")
    talk = converse(Talk(new_job()), twin, turns=2)
    assert talk.rec.export_removed
    assert sum(isinstance(e, lj.DropExport) for e in talk.effects) == 1
    assert talk.rec.phase is lj.Phase.ACK  # the verdict handed on, its ack not answered yet
    apply(talk, lj.TrainerError("unknown_job", "ack"))
    assert talk.rec.phase is lj.Phase.DONE  # not submitted again: nothing to send, nothing owed
    assert not any(isinstance(e, lj.Upload) for e in talk.effects)


def test_start_removes_an_export_the_trainer_holds_and_leaves_one_it_still_needs() -> None:
    waiting = new_job(phase=lj.Phase.WAIT)  # a record of an earlier version
    rec, eff = lj.step(waiting, lj.Started(in_store=False, staged=False, exported=True))
    assert rec.export_removed and eff == [lj.Save(), lj.DropExport()]
    # the agent went down between the record and the removal: it is removed again
    rec, eff = lj.step(rec, lj.Started(in_store=False, staged=False, exported=True))
    assert eff == [lj.DropExport()]
    rec, eff = lj.step(rec, lj.Started(in_store=False, staged=False, exported=False))
    assert eff == []
    uploading = new_job()
    assert lj.step(uploading, lj.Started(False, False, exported=True)) == (uploading, [])
