//! Cost of the body transforms as the gateway runs them on a buffered body: a 10 KiB JSON body
//! parsed, rewritten (remove, rename, set, wrap) and serialised again, and a 100 KiB XML
//! document converted to JSON bytes. The JSON parse + serialise alone is measured beside the
//! transform, so the operations' own share shows.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portico::policy::transform::json::{JsonOps, RawJsonOps};
use portico::policy::transform::xml::xml_to_json;
use serde_json::{json, Value};

/// A JSON document of about `bytes` bytes: an account with a list of order lines.
fn json_body(bytes: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut doc = json!({});
    for i in 0.. {
        items.push(json!({"id": i, "sku": format!("SKU-{i:06}"), "name": "Walnut desk lamp",
                          "price": 49.5 + i as f64, "tags": ["home", "light"], "in_stock": i % 3 != 0}));
        doc = json!({"user": {"id": 7, "name": "Ann", "email": "ann@example.com"},
                     "password": "hunter2", "items": items});
        if serde_json::to_vec(&doc).unwrap().len() >= bytes {
            break;
        }
    }
    serde_json::to_vec(&doc).unwrap()
}

/// An XML document of about `bytes` bytes: a catalog with attributes, text and repeats.
fn xml_body(bytes: usize) -> Vec<u8> {
    let mut out = String::from("<?xml version=\"1.0\"?><catalog region=\"eu\">");
    let mut i = 0;
    while out.len() < bytes {
        out.push_str(&format!(
            "<product id=\"{i}\" currency=\"EUR\"><name>Walnut desk lamp {i}</name>\
             <price>49.50</price><tag>home</tag><tag>light</tag>\
             <note><![CDATA[fragile & heavy]]></note></product>"
        ));
        i += 1;
    }
    out.push_str("</catalog>");
    out.into_bytes()
}

fn transforms(c: &mut Criterion) {
    let body = json_body(10 * 1024);
    let raw: RawJsonOps = serde_json::from_value(json!({
        "remove": ["/password"],
        "rename": {"/user/name": "/user/full_name"},
        "set": {"/meta/source": "gateway", "/user/verified": true},
        "wrap": "data"
    }))
    .unwrap();
    let mut errors = Vec::new();
    let ops = JsonOps::build(&raw, "bench", &[], &mut errors);
    assert!(errors.is_empty());
    let mut group = c.benchmark_group("transform");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("json_10KiB/parse_serialize_only", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(std::hint::black_box(&body)).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    group.bench_function("json_10KiB/remove_rename_set_wrap", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(std::hint::black_box(&body)).unwrap();
            serde_json::to_vec(&ops.apply(v, None)).unwrap()
        })
    });
    let xml = xml_body(100 * 1024);
    group.throughput(Throughput::Bytes(xml.len() as u64));
    group.bench_function("xml_to_json_100KiB", |b| {
        b.iter(|| serde_json::to_vec(&xml_to_json(std::hint::black_box(&xml)).unwrap()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, transforms);
criterion_main!(benches);
