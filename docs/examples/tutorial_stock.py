from fastapi import FastAPI, HTTPException

app = FastAPI()
STOCK = {"book": 12, "lamp": 0}


@app.get("/items/{item}")
async def read_item(item: str):
    if item not in STOCK:
        raise HTTPException(status_code=404, detail=f"no item {item}")
    return {"item": item, "available": STOCK[item]}
