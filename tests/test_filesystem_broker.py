"""The folder broker under concurrent processes: no message read half-written, none lost."""

import logging
import subprocess
import sys

from kombu import Connection, Exchange, Queue

import celeryconfig
from harness.processes import ROOT

PRODUCERS = 4
MESSAGES = 300

# Each producer binds its own queue (writing the shared exchange table) and then publishes
# to the queue the test drains, all at once.
PRODUCER = """
import sys
from kombu import Connection, Exchange, Queue
folder, number, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = {"data_folder_in": folder, "data_folder_out": folder,
           "control_folder": folder + "/control"}
transport = "harness.filesystem_broker:Transport"
with Connection("filesystem://", transport=transport, transport_options=options) as conn:
    exchange = Exchange("work", type="direct")
    Queue(f"own-{number}", exchange, routing_key=f"own-{number}")(conn.default_channel).declare()
    producer = conn.Producer(serializer="json")
    for i in range(count):
        producer.publish({"producer": int(number), "i": i}, exchange=exchange, routing_key="shared")
"""


def test_concurrent_producers_never_hand_a_consumer_a_partial_message(tmp_path):
    options = {
        "data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path),
        "control_folder": str(tmp_path / "control"), "polling_interval": 0.01,
    }
    with Connection(
        "filesystem://", transport="harness.filesystem_broker:Transport", transport_options=options
    ) as conn:
        queue = Queue("shared", Exchange("work", type="direct"), routing_key="shared")
        queue(conn.default_channel).declare()
        producers = [
            subprocess.Popen([sys.executable, "-c", PRODUCER, str(tmp_path), str(n), str(MESSAGES)],
                             cwd=ROOT)
            for n in range(PRODUCERS)
        ]
        received = []
        with conn.SimpleQueue(queue) as simple:
            # Read while they write: the race is a read between create and write.
            while len(received) < PRODUCERS * MESSAGES:
                message = simple.get(timeout=30)
                received.append((message.payload["producer"], message.payload["i"]))
                message.ack()
        for process in producers:
            assert process.wait(timeout=30) == 0
    assert sorted(received) == [(n, i) for n in range(PRODUCERS) for i in range(MESSAGES)]


def test_the_folder_broker_names_no_missing_hostname(tmp_path, caplog):
    # kombu warned "No hostname was supplied. Reverting to default 'localhost'" at every
    # worker start on the folder broker: a line a newcomer reads as an error.
    settings = celeryconfig.broker_settings({"CELERY_BROKER_FOLDER": str(tmp_path)})
    with Connection(settings["broker_url"], transport=settings["broker_transport"],
                    transport_options=settings["broker_transport_options"]) as connection:
        connection.info()
        connection.default_channel  # noqa: B018 -- connects, as a worker does at start
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
