// fogwheel example: a scene with #include files and a texture of its own, in crate-parts/.
// fogwheel render examples/scenes/crate.pov +W320 +H240 --include examples/scenes/crate-parts
// (povray itself: povray crate.pov +W320 +H240 +Lcrate-parts)
#version 3.7;
#include "crate.inc"
global_settings { assumed_gamma 1.0 }

camera { location <2.5, 2.2, -4> look_at <0, 0.6, 0> }
light_source { <4, 7, -5> color rgb 1 }
background { color rgb <0.6, 0.7, 0.85> }

plane { y, 0 pigment { color Floor_Colour } }
object { Crate(1.2) translate <0, 0.6, 0> rotate y * 20 }
