// The Explore map: a WebGL scatter (plotly's scattergl) inside a gr.HTML component.
// props.value and props.style are tokens ({token, n}); the map's data ({x, y, kind, hover, thumb, arrows,
// title, n}) and style ({color, size, key, colour_by}) are fetched once through the server functions
// map_data and map_style: megabytes in props would be re-serialised by the page on every update.
// props.selected: point numbers to ring. A click or a lasso/box selection triggers "select" with
// {index: [point, ...]}; Python answers with the grid and the point's details. The rings are DOM
// elements over the plot and the arrows one SVG trace: neither redraws the 100k WebGL points.
const plot = element.querySelector(".rge-map-plot");
const tip = element.querySelector(".rge-map-tip");
const key = element.querySelector(".rge-map-key");
const SYMBOLS = ["circle", "circle-open", "diamond"];
const NAMES = ["gallery items", "queries, direct", "queries, reasoning"];
const rings = element.querySelector(".rge-map-rings");
const ARROWS = 3; // the trace index of the arrows (clicks and hovers on it are ignored)
const MAX_RINGS = 500;
let map = null;  // the value drawn
let style = null;  // its colours and sizes
let ringed = [];  // point numbers ringed
let members = [[], [], []];  // point numbers per kind, in trace order

function escape(s) {
  return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}

function traces(v, s) {
  members = [[], [], []];
  v.kind.forEach((k, i) => members[k].push(i));
  const out = members.map((idx, k) => ({
    type: "scattergl", mode: "markers", name: NAMES[k], customdata: idx, hoverinfo: "none",
    x: idx.map(i => v.x[i]), y: idx.map(i => v.y[i]),
    marker: {symbol: SYMBOLS[k], color: idx.map(i => s.color[i]), opacity: k === 0 ? 0.85 : 1,
             size: idx.map(i => s.size[i] * (k === 0 ? 1 : 1.5)),
             line: {width: k === 1 ? 2 : 0, color: idx.map(i => s.color[i])}},
  }));
  // one SVG trace for every arrow: a line per query, NaN between, an arrow head at its reasoning end
  const ax = [], ay = [], size = [];
  v.arrows.forEach(([i, j]) => { ax.push(v.x[i], v.x[j], NaN); ay.push(v.y[i], v.y[j], NaN); size.push(0, 9, 0); });
  out.push({type: "scatter", mode: "lines+markers", name: "direct -> reasoning", hoverinfo: "skip", x: ax, y: ay,
            line: {width: 1.1, color: "rgba(60,60,60,0.5)"},
            marker: {symbol: "arrow", angleref: "previous", size: size, standoff: 5, color: "rgba(60,60,60,0.8)"}});
  return out;
}

function drawKey(s) {
  key.innerHTML = `<b>colour: ${escape(s.colour_by)}</b> ` + s.key.map(([name, colour, count]) =>
    `<span class="rge-key-item"><span class="rge-key-dot" style="background:${colour}"></span>` +
    `${escape(name)} <small>(${count})</small></span>`).join("");
}

async function draw() {
  const token = props.value && props.value.token, styleToken = props.style && props.style.token;
  if (!token || !styleToken || typeof Plotly === "undefined") return;
  const [v, s] = await Promise.all([server.map_data(token), server.map_style(styleToken)]);
  map = v;
  style = s;
  const layout = {
    title: {text: escape(v.title), font: {size: 14}, x: 0.01, xanchor: "left"}, height: 640, autosize: true,
    // lasso by default; past 20k points pan (a click in lasso mode clears a selection over every point)
    dragmode: v.n > 20000 ? "pan" : "lasso", hovermode: "closest", uirevision: v.title, template: "plotly_white",
    xaxis: {visible: false}, yaxis: {visible: false},
    legend: {orientation: "h", y: -0.02, x: 0.5, xanchor: "center"},
  };
  // doubleClick off: two quick clicks on two points would reset the axes (a full WebGL redraw, ~2 s
  // at 100k points) instead of selecting both in turn; the modebar's "Reset axes" still resets
  await Plotly.react(plot, traces(v, s), layout,
                     // no "Share chart...": plotly.py's plotly.js offers an upload to Plotly Cloud by default
                     {scrollZoom: true, displaylogo: false, responsive: true, doubleClick: false,
                      showSendToCloud: false});
  drawKey(s);
  highlight(props.selected || []);
  element.dataset.points = String(v.n);  // for tests and scripts: the map is drawn
  element.dataset.colourBy = s.colour_by;
  bind();
}

async function restyle() {
  const styleToken = props.style && props.style.token;
  if (!map || !styleToken) return draw();
  const s = await server.map_style(styleToken);
  style = s;
  const colours = members.map(idx => idx.map(i => s.color[i]));
  const sizes = members.map((idx, k) => idx.map(i => s.size[i] * (k === 0 ? 1 : 1.5)));
  await Plotly.restyle(plot, {"marker.color": colours, "marker.size": sizes, "marker.line.color": colours}, [0, 1, 2]);
  placeRings();
  drawKey(s);
  element.dataset.colourBy = s.colour_by;
}

function placeRings() {
  const L = plot._fullLayout;
  if (!map || !L || !L.xaxis) return;
  rings.innerHTML = ringed.slice(0, MAX_RINGS).map(i =>
    `<div class="rge-ring" style="left:${L.xaxis._offset + L.xaxis.d2p(map.x[i])}px;` +
    `top:${L.yaxis._offset + L.yaxis.d2p(map.y[i])}px"></div>`).join("");
}

function highlight(indices) {
  if (!map) return;
  ringed = indices;
  placeRings();
  element.dataset.selected = indices.slice(0, 50).join(",");
}

function choose(indices) {
  highlight(indices);
  trigger("select", {index: indices, value: indices.length});
}

function bind() {
  if (plot.dataset.bound) return;
  plot.dataset.bound = "1";
  // drawn while its tab was hidden, the plot has plotly's default width: follow the column instead
  new ResizeObserver(() => { if (plot.offsetWidth) Plotly.Plots.resize(plot); }).observe(plot);
  plot.on("plotly_click", e => {
    const p = e.points.find(p => p.curveNumber < ARROWS);
    if (p) choose([p.customdata]);
  });
  plot.on("plotly_selected", e => {
    if (e && e.points) choose(e.points.filter(p => p.curveNumber < ARROWS).map(p => p.customdata));
  });
  plot.on("plotly_hover", e => {
    const p = e.points.find(p => p.curveNumber < ARROWS);
    if (!p || !map) return;
    const i = p.customdata, img = map.thumb[i];
    tip.innerHTML = (img ? `<img src="${img}">` : "") + `<div>${escape(map.hover[i])}</div>`;
    const box = element.getBoundingClientRect();
    tip.style.left = `${e.event.clientX - box.left + 14}px`;
    tip.style.top = `${e.event.clientY - box.top + 14}px`;
    tip.style.display = "block";
  });
  plot.on("plotly_unhover", () => { tip.style.display = "none"; });
  plot.on("plotly_relayout", placeRings);  // zoom, pan, resize: the rings follow their points
  plot.on("plotly_relayouting", placeRings);
}

// The grid (another component) asks the map to show a point: a window event, no round trip.
window.addEventListener("rge-map-show", e => highlight(e.detail));
watch("value", draw);
watch("style", restyle);
watch("selected", () => highlight(props.selected || []));
draw();
