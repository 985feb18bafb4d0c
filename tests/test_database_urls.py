"""What `libpq_url` takes and refuses of the URLs operators write: a URL whose user or password libpq
would read as another part is refused without a piece of the password in the words, and the forms
libpq reads as they are meant, an @ in a query among them, are taken."""

import pytest

from api.db.urls import DatabaseUrlError, libpq_url

SECRET_PIECES = ("Left7pw", "Right7pw")


@pytest.mark.parametrize(
    "url",
    [
        # The verification probe's, each taken before c2a1eda and refused by it: no user or password,
        # a query holding a path and then an @.
        "postgresql://?host=/sock&dbname=todo&user=postgres&application_name=ops@corp",
        "postgresql://localhost?sslrootcert=/etc/ssl/r.crt&user=bob@corp",
        "postgresql://?host=/cloudsql/p:r:i&user=sa@proj.iam",
        "postgresql://localhost:5432?passfile=/home/u/.pgpass&user=a@b",
        "postgresql://u:pw@host/db?user=alice@x",
        "postgresql://u:Left7pw%3FRight7pw%2F%40@host/db",  # ?, / and @ percent-encoded
        "postgresql://u:p%40w@host/a%40b?sslmode=require",  # a database named a@b
        "postgresql://neondb_owner:npg_abc@ep-x-pooler.us-east-2.aws.neon.tech/neondb"
        "?sslmode=require&channel_binding=require",
        "postgresql:///db?host=/tmp",
    ],
)
def test_a_url_libpq_reads_as_it_is_meant_is_taken(url: str) -> None:
    assert libpq_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:12?Left7pw=x/Right7pw@host/db",  # read: host u, port 12, a parameter Left7pw
        "postgresql://u:12?Left7pw=x/Right7pw@host",  # the same without a database
        "postgresql://u:2024?sslmode=Left7pw/Right7pw@host/db",  # read: host u, port 2024
        "postgresql://u:x?y@Left7pw/Right7pw@host/db",  # read: host Left7pw, database Right7pw@host/db
        "postgresql://u:Left7pw/Right7pw@host/db",
        "postgresql://u:Left7pw@Right7pw@host/db",
    ],
)
def test_a_password_libpq_would_read_as_another_part_is_refused_without_a_piece_of_it(url: str) -> None:
    with pytest.raises(DatabaseUrlError) as refused:
        libpq_url(url)
    assert "percent-encoded" in str(refused.value)
    for piece in SECRET_PIECES:
        assert piece not in str(refused.value)
