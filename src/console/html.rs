//! HTML building blocks for the console's page: escaping, the page frame with its inline style and
//! script (no external assets, no build step), and tables.

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// JSON for a `<script type="application/json">` block: `</` cannot close the block early.
pub fn script_json(value: &serde_json::Value) -> String {
    value.to_string().replace("</", "<\\/")
}

/// A query string value, percent-encoded.
pub fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The whole document around `body`.
pub fn frame(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script>\
         </body></html>",
        esc(title)
    )
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}header a,header button{color:#9cc3ff}
main{padding:12px 20px;display:grid;gap:14px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 14px}
h2{font-size:15px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#555;font-size:12px;text-transform:uppercase}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.row2{display:grid;grid-template-columns:1fr 1fr;gap:14px}
form.inline{display:flex;gap:8px;flex-wrap:wrap;align-items:end}
label{display:flex;flex-direction:column;font-size:12px;color:#555}
input{font:inherit;padding:3px 6px;border:1px solid #c5cad3;border-radius:4px}
button,.button{font:inherit;padding:4px 10px;border-radius:4px;border:1px solid #3a6fd8;background:#3a6fd8;color:#fff;cursor:pointer;text-decoration:none}
button.danger{background:#c0392b;border-color:#c0392b}.plain{background:#fff;color:#3a6fd8}
#confirm{background:#fff6d6;border:1px solid #e6c65c;padding:8px;border-radius:4px;margin-top:8px}
.muted{color:#777}.err{color:#b00020}.ok{color:#16794c}
pre{background:#f0f2f5;padding:8px;overflow:auto;max-height:420px}
code{background:#eef0f3;padding:0 3px;border-radius:3px}header code{background:#33405a}
"#;

/// Counts refresh every five seconds; write actions count first (a dry run) and act only after
/// the operator confirms the count.
const SCRIPT: &str = r#"
const $=id=>document.getElementById(id);
const data=$('console-data')?JSON.parse($('console-data').textContent):{filter:{}};
async function call(path,body){
  const r=await fetch(path,{method:'POST',credentials:'same-origin',
    headers:{'content-type':'application/json'},body:JSON.stringify(body)});
  const j=await r.json().catch(()=>({}));
  if(!r.ok)throw new Error(j.error||('HTTP '+r.status));
  return j;
}
function num(id){const v=$(id)&&$(id).value.trim();return v?Number(v):undefined}
function selected(){return [...document.querySelectorAll('input.pick:checked')].map(e=>e.value)}
let pending=null;
async function ask(kind,onlySelected){
  $('result').textContent='';
  const body=Object.assign({},data.filter);
  if(onlySelected){const ids=selected();if(!ids.length){$('result').textContent='select messages first';return}body.ids=ids}
  if(kind==='replay'){body.reason=$('reason').value.trim();body.rate=num('rate');body.limit=num('limit')}
  try{
    const dry=await call('/api/dead-letters/'+kind,Object.assign({},body,{dry_run:true}));
    let text=(kind==='replay'?'Replay ':'Purge ')+dry.matched+' dead letter(s) matching '+dry.filter;
    if(kind==='replay')text+=' at most '+dry.rate+'/s';
    if(kind==='purge'&&dry.matched>dry.exported){text+='. Only '+dry.exported+' were exported: this purges without a complete export';body.without_export=true}
    $('confirm-text').textContent=text+'?';$('confirm').hidden=false;pending={kind,body};
  }catch(e){$('result').innerHTML='<span class="err"></span>';$('result').firstChild.textContent=e.message}
}
async function go(){
  if(!pending)return;const {kind,body}=pending;pending=null;$('confirm').hidden=true;
  try{
    const r=await call('/api/dead-letters/'+kind,body);
    $('result').innerHTML='<span class="ok"></span>';
    $('result').firstChild.textContent=(kind==='replay'?'replayed ':'purged ')+(r.replayed??r.purged)+' dead letter(s)';
    refresh();
  }catch(e){$('result').innerHTML='<span class="err"></span>';$('result').firstChild.textContent=e.message}
}
function cancel(){pending=null;$('confirm').hidden=true}
async function refresh(){
  try{
    const s=await (await fetch('/api/dead-letters/summary',{credentials:'same-origin'})).json();
    if($('depth'))$('depth').textContent=s.depth;
    for(const [attr,groups] of [['code',s.by_code],['stage',s.by_stage]]){
      const counts=Object.fromEntries((groups||[]).map(g=>[g.key,g.count]));
      document.querySelectorAll('[data-count-'+attr+']').forEach(el=>{el.textContent=counts[el.dataset['count'+attr[0].toUpperCase()+attr.slice(1)]]??0});
    }
    if($('refreshed'))$('refreshed').textContent=new Date().toLocaleTimeString();
  }catch(e){}
}
if($('depth'))setInterval(refresh,5000);
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_data_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn json_in_a_script_block_cannot_close_it() {
        let v = serde_json::json!({"code": "</script><script>alert(1)"});
        assert!(!script_json(&v).contains("</script>"));
    }
}
