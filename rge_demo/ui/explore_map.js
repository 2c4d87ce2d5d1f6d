// The Explore map: a WebGL scatter (plotly's scattergl) inside a gr.HTML component.
// props.value: {x, y, kind, hover, thumb, arrows, title, n}; props.style: {color, size, key, colour_by};
// props.selected: point numbers to highlight. A click or a lasso/box selection triggers "select"
// with {index: [point, ...]}; Python answers with the grid and the point's details.
const plot = element.querySelector(".rge-map-plot");
const tip = element.querySelector(".rge-map-tip");
const key = element.querySelector(".rge-map-key");
const SYMBOLS = ["circle", "circle-open", "diamond"];
const NAMES = ["gallery items", "queries, direct", "queries, reasoning"];
const SELECTED = 3; // the trace index of the selection ring
let map = null;  // the value drawn
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
  out.push({type: "scattergl", mode: "markers", name: "selected", showlegend: false, hoverinfo: "none",
            x: [], y: [], marker: {symbol: "circle-open", size: 20, color: "#111", line: {width: 3, color: "#111"}}});
  return out;
}

function arrows(v) {
  return v.arrows.map(([a, b]) => ({
    x: v.x[b], y: v.y[b], ax: v.x[a], ay: v.y[a], xref: "x", yref: "y", axref: "x", ayref: "y", text: "",
    showarrow: true, arrowhead: 2, arrowsize: 1.4, arrowwidth: 1.3, standoff: 7, startstandoff: 5,
    arrowcolor: "rgba(60,60,60,0.55)"}));
}

function drawKey(s) {
  key.innerHTML = `<b>colour: ${escape(s.colour_by)}</b> ` + s.key.map(([name, colour, count]) =>
    `<span class="rge-key-item"><span class="rge-key-dot" style="background:${colour}"></span>` +
    `${escape(name)} <small>(${count})</small></span>`).join("");
}

function draw() {
  const v = props.value, s = props.style;
  if (!v || !v.x || !s || !s.color || typeof Plotly === "undefined") return;
  map = v;
  const layout = {
    title: {text: escape(v.title), font: {size: 14}, x: 0.01, xanchor: "left"}, height: 640, autosize: true, margin: {l: 10, r: 10, t: 40, b: 10},
    dragmode: "lasso", hovermode: "closest", uirevision: v.title, template: "plotly_white",
    xaxis: {visible: false}, yaxis: {visible: false}, annotations: arrows(v),
    legend: {orientation: "h", y: -0.02, x: 0.5, xanchor: "center"},
  };
  Plotly.react(plot, traces(v, s), layout, {scrollZoom: true, displaylogo: false, responsive: true});
  drawKey(s);
  highlight(props.selected || []);
  element.dataset.points = String(v.n);  // for tests and scripts: the map is drawn
  bind();
}

function restyle() {
  const s = props.style;
  if (!map || !s || !s.color) return draw();
  const colours = members.map(idx => idx.map(i => s.color[i]));
  const sizes = members.map((idx, k) => idx.map(i => s.size[i] * (k === 0 ? 1 : 1.5)));
  Plotly.restyle(plot, {"marker.color": colours, "marker.size": sizes, "marker.line.color": colours}, [0, 1, 2]);
  drawKey(s);
  element.dataset.colourBy = s.colour_by;
}

function highlight(indices) {
  if (!map) return;
  Plotly.restyle(plot, {x: [indices.map(i => map.x[i])], y: [indices.map(i => map.y[i])]}, [SELECTED]);
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
    const p = e.points.find(p => p.curveNumber < SELECTED);
    if (p) choose([p.customdata]);
  });
  plot.on("plotly_selected", e => {
    if (e && e.points) choose(e.points.filter(p => p.curveNumber < SELECTED).map(p => p.customdata));
  });
  plot.on("plotly_hover", e => {
    const p = e.points.find(p => p.curveNumber < SELECTED);
    if (!p || !map) return;
    const i = p.customdata, img = map.thumb[i];
    tip.innerHTML = (img ? `<img src="${img}">` : "") + `<div>${escape(map.hover[i])}</div>`;
    const box = element.getBoundingClientRect();
    tip.style.left = `${e.event.clientX - box.left + 14}px`;
    tip.style.top = `${e.event.clientY - box.top + 14}px`;
    tip.style.display = "block";
  });
  plot.on("plotly_unhover", () => { tip.style.display = "none"; });
}

// The grid (another component) asks the map to show a point: a window event, no round trip.
window.addEventListener("rge-map-show", e => highlight(e.detail));
watch("value", draw);
watch("style", restyle);
watch("selected", () => highlight(props.selected || []));
draw();
