"""Layout of the Dashboard tab (the handlers are in :mod:`volviz.app.dashboard_tab`), and the
page's side of live input: a small script that reads the webcam (``getUserMedia``), downscales
each frame in the browser to :data:`CAMERA_SIDE` pixels, and sends it as a JPEG data URL at most
``lv_rate`` times a second; and that sends an uploaded or dropped file (a file above the state
key's bound is downscaled in the page first). What the page cannot do (camera refused, a file it
cannot read) goes to ``lv_client_error``, shown as one line.
"""

from __future__ import annotations

from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

from volviz.app import dashboard_keys as K
from volviz.app import state as S
from volviz.app.live import MAX_FRAME_CHARS
from volviz.app.ui_fields import FIELD

CAMERA_SIDE = 160  # px: the longest side of a webcam frame as sent
UPLOAD_SIDE = 512  # px: a large upload is downscaled to this in the page

LIVE_JS = """
if (!window.volvizLive) window.volvizLive = (function () {
  var S = {stream: null, timer: null, video: null, canvas: null, n: 0, e: 0};
  var LIMIT = %(limit)d, SIDE = %(side)d, UPLOAD = %(upload)d;
  function fail(trame, what, e) {
    S.e += 1;
    var why = e && (e.name ? e.name + (e.message ? ' (' + e.message + ')' : '') : e.message || e);
    trame.state.set('lv_client_error', what + ': ' + why + ' [' + S.e + ']');
  }
  function tag(url) { S.n += 1; return url.replace(';base64,', ';n=' + S.n + ';base64,'); }
  function stop() {
    if (S.timer) clearInterval(S.timer);
    S.timer = null;
    if (S.stream) S.stream.getTracks().forEach(function (t) { t.stop(); });
    S.stream = null;
  }
  function scaled(src, w, h, side) {
    var f = Math.min(1, side / Math.max(w, h));
    var c = S.canvas || (S.canvas = document.createElement('canvas'));
    c.width = Math.max(1, Math.round(w * f)); c.height = Math.max(1, Math.round(h * f));
    c.getContext('2d').drawImage(src, 0, 0, c.width, c.height);
    return c.toDataURL('image' + String.fromCharCode(47) + 'jpeg', 0.85);
  }
  function grab(trame) {
    if (!document.getElementById('dashboard-image')) { stop(); return; }
    var v = S.video;
    if (!v || v.readyState < 2 || !v.videoWidth) return;
    var url = scaled(v, v.videoWidth, v.videoHeight, SIDE);
    if (url.length <= LIMIT) trame.state.set('lv_frame', tag(url));
  }
  return {
    running: function () { return !!S.stream; },
    start: function (trame, rate) {
      stop();
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        fail(trame, 'no camera', 'this page may not use a camera (it needs localhost or https)');
        return;
      }
      navigator.mediaDevices.getUserMedia({video: {width: {ideal: 320}, height: {ideal: 240}}, audio: false})
        .then(function (stream) {
          S.stream = stream;
          S.video = document.createElement('video');
          S.video.muted = true; S.video.playsInline = true; S.video.srcObject = stream; S.video.play();
          S.timer = setInterval(function () { grab(trame); }, 1000 / Math.max(1, Math.min(15, rate || 8)));
        })
        .catch(function (e) { fail(trame, 'camera refused', e); });
    },
    stop: stop,
    upload: function (trame, file) {
      if (!file) return;
      stop();
      var r = new FileReader();
      r.onerror = function () { fail(trame, 'cannot read the file', r.error); };
      r.onload = function () {
        var url = String(r.result);
        if (url.length <= LIMIT) { trame.state.set('lv_upload', tag(url)); return; }
        var img = new Image();
        img.onload = function () {
          var small = scaled(img, img.naturalWidth, img.naturalHeight, UPLOAD);
          if (small.length <= LIMIT) trame.state.set('lv_upload', tag(small));
          else fail(trame, 'upload too large', 'over ' + Math.round(LIMIT * 0.75 / 1024) + ' KiB even downscaled');
        };
        img.onerror = function () {
          var kib = Math.round(file.size / 1024);
          fail(trame, 'not an image', file.name.slice(0, 60) + ' (' + kib + ' KiB) cannot be decoded');
        };
        img.src = url;
      };
      r.readAsDataURL(file);
    }
  };
})();
""" % {"limit": MAX_FRAME_CHARS, "side": CAMERA_SIDE, "upload": UPLOAD_SIDE}


def _layer_controls(title: str, layer: str, items: str, sel: str, rows: str, cmap: str, suffix: str) -> None:
    html.Div(title, classes="text-caption text-grey mt-2")
    v3.VSelect(v_model=(layer,), items=(items,), label="layer", id=f"db-layer-{suffix}", classes="mb-2", **FIELD)
    with html.Div(classes="d-flex"):
        v3.VTextField(
            v_model=(sel,), label="maps / neurons", placeholder="all, 0-15, 3,7", id=f"db-sel-{suffix}", **FIELD
        )
        v3.VTextField(
            v_model_number=(rows,),
            type="number",
            min=0,
            max=K.MAX_ROWS,
            label="rows",
            style="max-width: 72px",
            classes="ml-1",
            id=f"db-rows-{suffix}",
            **FIELD,
        )
    v3.VSelect(v_model=(cmap,), items=("items_db_cmap", S.CMAPS), label="colour map", classes="mt-2", **FIELD)


def dashboard_tab(tab, ctx) -> None:
    client.Script(LIVE_JS)
    with v3.VCard(classes="pa-2", variant="outlined", id="dashboard-pane"):
        with html.Div(classes="d-flex align-center flex-wrap", style="gap: 8px"):
            with v3.VBtnToggle(v_model=(K.DB_SOURCE,), mandatory=True, density="compact", id="db-source"):
                v3.VBtn("slider", value="slider", size="small", id="db-src-slider", click="window.volvizLive.stop()")
                v3.VBtn(
                    "camera",
                    value="camera",
                    size="small",
                    id="db-src-camera",
                    click=f"window.volvizLive.start(trame, {K.LV_RATE})",
                )
                v3.VBtn("upload", value="upload", size="small", id="db-src-upload", click="window.volvizLive.stop()")
                v3.VBtn("video", value="video", size="small", id="db-src-video", click="window.volvizLive.stop()")
            v3.VSelect(
                v_model=(K.LV_RATE,),
                items=("items_lv_rate", [1, 2, 4, 8, 12, 15]),
                label="frames/s",
                update_modelValue="window.volvizLive.running() && window.volvizLive.start(trame, $event)",
                style="min-width: 110px; max-width: 120px",
                **FIELD,
            )
            v3.VBtn("stop camera", size="small", variant="tonal", click="window.volvizLive.stop()", id="db-camera-stop")
            html.Input(
                type="file",
                accept="image/*",
                id="lv-file",
                classes="text-caption",
                style="max-width: 220px",
                __events=["change"],
                change="window.volvizLive.upload(trame, $event.target.files[0])",
            )
            v3.VSelect(
                v_if=f"{K.LV_VIDEOS}.length",
                v_model=(K.LV_VIDEO,),
                items=(K.LV_VIDEOS,),
                label="video",
                style="max-width: 200px",
                id="db-video",
                **FIELD,
            )
            v3.VSwitch(
                v_if=f"{K.LV_VIDEOS}.length",
                v_model=(K.LV_PLAYING,),
                label="play",
                color="primary",
                density="compact",
                hide_details=True,
                style="flex: 0 0 auto",
                id="db-play",
            )
            v3.VSelect(
                v_model=(K.DB_VIEW,),
                items=("items_db_view", K.VIEWS),
                label="view",
                style="max-width: 220px",
                id="db-view",
                **FIELD,
            )
            v3.VSpacer()
            v3.VTextField(
                v_model_number=(K.DB_R_IMAGES,),
                type="number",
                min=1,
                max=900,
                label="images",
                style="max-width: 90px",
                **FIELD,
            )
            v3.VBtn(
                "record",
                prepend_icon="mdi-record-rec",
                size="small",
                color="red-darken-2",
                loading=(K.DB_R_BUSY,),
                click=ctx.ctrl.dashboard_record,
                id="db-record",
            )
            html.A("download", v_if=f"{K.DB_R_URL} && !{K.DB_R_BUSY}", href=(K.DB_R_URL,), id="db-record-link")
        with html.Div(classes="d-flex text-caption mt-1", style="gap: 16px"):
            html.Span("predicted {{ %s }}" % K.DB_PRED, id="db-pred")
            html.Span("{{ %s }}" % K.LV_STATS, id="lv-stats", classes="text-grey")
            html.Span("{{ %s }}" % K.DB_R_STATUS, id="db-record-status", classes="text-grey")
        html.Div("{{ %s }}" % K.DB_ERROR, v_if=(K.DB_ERROR,), id="db-error", classes="text-caption text-warning")
        with v3.VRow(dense=True, classes="mt-1"):
            with v3.VCol(cols=12, lg=9):
                with html.Div(
                    id="db-drop",
                    style="border: 1px dashed #555; min-height: 200px; position: relative;",
                    __events=["dragover", "drop"],
                    dragover="$event.preventDefault()",
                    drop="$event.preventDefault(); window.volvizLive.upload(trame, $event.dataTransfer.files[0])",
                ):
                    html.Img(
                        v_if=(K.DB_IMAGE,),
                        src=(K.DB_IMAGE,),
                        id="dashboard-image",
                        style="width: 100%; max-width: 960px; display: block;",
                    )
                    html.Div(
                        "drop an image here",
                        classes="text-caption text-grey",
                        style="position: absolute; right: 6px; bottom: 2px;",
                    )
            with v3.VCol(cols=12, lg=3):
                _layer_controls("first conv layer", K.DB_CONV_A, K.DB_CONVS, K.DB_SEL_A, K.DB_ROWS_A, K.DB_CMAP_A, "a")
                _layer_controls("second conv layer", K.DB_CONV_B, K.DB_CONVS, K.DB_SEL_B, K.DB_ROWS_B, K.DB_CMAP_B, "b")
                _layer_controls("linear layer", K.DB_FC, K.DB_FCS, K.DB_SEL_FC, K.DB_ROWS_FC, K.DB_CMAP_FC, "fc")
                v3.VSelect(
                    v_model=(K.DB_CLASS,),
                    items=(K.DB_CLASSES,),
                    label="FC-only view: sort by class",
                    classes="mt-2",
                    id="db-class",
                    **FIELD,
                )
