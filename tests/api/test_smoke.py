from tests.conftest import Tenant, example

SYNC = """
mutation($input: SyncInput!) { sync(input: $input) {
  checkpoint dryRun totals { inserted updated unchanged deleted failed }
  users { ids errors { index code message field } }
  members { ids errors { index code message field } }
  classrooms { ids errors { index code message field } }
}}"""


async def test_education_example(tenant: Tenant) -> None:
    body = await tenant.gql(SYNC, {"input": example("education-sync.json")})
    report = body["data"]["sync"]
    assert report["totals"]["inserted"] == 3, report
    body = await tenant.gql("""{ changes { checkpoint hasMore
        users { inserted { id name email roleSet { guardian student } birth } }
        members { inserted { name userIds users { email } } }
        classrooms { inserted { name tags members { name } admins { name } } } } }""")
    print(body)
    ch = body["data"]["changes"]
    assert ch["members"]["inserted"][0]["users"][0]["email"] == "familiar.exemplo@email.com"
