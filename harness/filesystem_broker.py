"""kombu's filesystem transport, made safe for several processes at once.

The demo's broker is a folder, so that it runs with no server at all. kombu 5.7 creates
each file first and locks or writes it afterwards, and another process can read the file
in between: an empty message, or an empty exchange table, and the worker dies on a
JSONDecodeError. This transport closes both gaps, and creates its folders itself.
"""

import os
import uuid
from contextlib import contextmanager
from time import monotonic_ns

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Whoever comes first, producer or worker, makes the folders: kombu's own transport
        # fails on a folder that does not exist yet.
        for folder in (self.data_folder_in, self.data_folder_out):
            os.makedirs(folder, exist_ok=True)

    def _put(self, queue, payload, **kwargs):
        # kombu's naming, the time first so that workers take messages in the order they
        # came (names are sorted as text), but in nanoseconds and padded: at kombu's
        # milliseconds, two messages of one millisecond went in the order of random uuids.
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Workers read only names that end in ".<queue>.msg", and a rename within one
        # folder is atomic: they see the whole message or none of it.
        with open(final + ".partial", "wb") as message:
            message.write(str_to_bytes(dumps(payload)))
        os.rename(final + ".partial", final)

    def _queue_bind(self, *args):
        with self._tables_locked(filesystem.LOCK_EX):
            super()._queue_bind(*args)

    def get_table(self, exchange):
        with self._tables_locked(filesystem.LOCK_SH):
            return super().get_table(exchange)

    @contextmanager
    def _tables_locked(self, mode):
        # One lock file that always exists guards every exchange table, from before the
        # table file is created until after it is written.
        self.control_folder.mkdir(exist_ok=True)
        with open(self.control_folder / "tables.lock", "a") as guard:
            filesystem.lock(guard, mode)
            try:
                yield
            finally:
                filesystem.unlock(guard)


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self):
        # A folder has no host. kombu's virtual transports default the hostname to
        # "localhost", and then warn "No hostname was supplied" on every connection whose URL
        # names none, as filesystem:// never does: a newcomer reads that line as an error.
        return {"port": self.default_port}
