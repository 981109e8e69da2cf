import time, tempfile
from pathlib import Path
from bench._common import fresh_secantus
from pymongo import MongoClient

def main():
    with tempfile.TemporaryDirectory() as d, fresh_secantus(Path(d)) as uri:
        c = MongoClient(uri)
        coll = c.t.p
        coll.create_index("crm.id", unique=True, name="crm_id", sparse=True)
        coll.create_index("crm.converted_from", name="conv", sparse=True)
        coll.insert_many([{"crm": {"id": f"00Q{k:015d}"}, "x": k} for k in range(10000)])
        ids = [f"00Q{k:015d}" for k in range(100, 300)]
        for name, q in {"in": {"crm.id": {"$in": ids}},
                        "or": {"$or": [{"crm.id": {"$in": ids}}, {"crm.converted_from": {"$in": ids}}]},
                        "conv in": {"crm.converted_from": {"$in": ids}}}.items():
            t = time.perf_counter()
            n = len(list(coll.find(q)))
            el = time.perf_counter() - t
            plan = coll.find(q).explain().get("queryPlanner", {}).get("winningPlan", {})
            print(f"{name:8s} n={n} {el*1000:.1f} ms plan={str(plan)[:200]}")
        # upsert by crm.id with sparse index
        t=time.perf_counter()
        from pymongo import UpdateOne
        coll.bulk_write([UpdateOne({"crm.id": f"00Q{k:015d}"}, {"$set": {"y": 1}}, upsert=True) for k in range(10000, 11000)], ordered=False)
        print("1000 upserts by crm.id (sparse)", f"{(time.perf_counter()-t)*1000:.0f} ms")
        t=time.perf_counter()
        coll.bulk_write([UpdateOne({"_id": k}, {"$set": {"y": 1}}, upsert=True) for k in range(1000)], ordered=False)
        print("1000 upserts by _id", f"{(time.perf_counter()-t)*1000:.0f} ms")
        t=time.perf_counter()
        ds = list(coll.find({"x": {"$lt": 1000}}))
        coll.bulk_write([UpdateOne({"_id": d["_id"]}, {"$set": {"y": 2, "a.b": 3, "_sync.w": time.time()}}) for d in ds], ordered=False)
        print("1000 updates by _id (existing)", f"{(time.perf_counter()-t)*1000:.0f} ms")
        t=time.perf_counter()
        c.t.logs.insert_many([{"ts": time.time(), "k": k, "fields": {"title": {"old": "a", "new": "b"}}} for k in range(1000)])
        print("insert_many 1000 logs (no idx)", f"{(time.perf_counter()-t)*1000:.0f} ms")
main()
