import asyncio, os
from airflow_provider_maas.hooks.maas import MaaSHook

def socks():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n

async def test_async(emulator):
    hook = MaaSHook(retry_base_delay=0.01)
    hook.upload_file("/work/main/tests/fixtures/requests_example.jsonl", "a.jsonl")
    name = hook.create_batch_job("a.jsonl", "d")["name"]
    hook.session.close()
    await asyncio.sleep(0.2)
    before = socks()
    import time; t = time.monotonic()
    async with hook.async_session_scope():
        jobs = await asyncio.gather(*(hook.aget_batch_job(name) for _ in range(1000)))
    print("took", time.monotonic() - t, "during", socks())
    for _ in range(20):
        await asyncio.sleep(0.05)
    print(before, socks(), len(jobs), {j["state"] for j in jobs})
